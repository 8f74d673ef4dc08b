from m7b.cli.app import main

if __name__ == "__main__":  # also imported (as __mp_main__) by multiprocessing's forkserver: no CLI run then
    main()
