from mtlskit.cli import run

run()
