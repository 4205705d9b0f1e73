from upp_grid.cli import main

main()
