"""The subcommands of ``mimoctl``, one module each; ``mimo_operator.cli.COMMAND_MODULES`` lists them."""
