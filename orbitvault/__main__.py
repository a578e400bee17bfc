from orbitvault.cli import main

main()
