from m7b.cli import main

main()
