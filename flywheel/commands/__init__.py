"""One module per `flywheel` command group; `flywheel.cli` assembles them. Heavy imports (torch, vLLM)
happen inside command functions so that `flywheel --help` stays instant."""
