from biaslint.cli import run

run()
