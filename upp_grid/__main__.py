from upp_grid.entry import run

run()
