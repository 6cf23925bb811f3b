"""``python -m mimo_worker.simengine``: a simulated SGLang server, started like ``sglang.launch_server``.

    python -m mimo_worker.simengine --mimo-manifest deployment.yaml --port 30000 --host 127.0.0.1
    python -m mimo_worker.simengine <the plan's sglang.launch_server argv> [--mimo-manifest M]

With ``--disaggregation-mode prefill`` or ``decode`` it is one side of a prefill/decode pair (``server.py``,
``disaggregation.py``); a manifest with ``spec.disaggregation`` is planned for that side.

Node rank 0 serves SGLang's API; node ranks ≥ 1 serve the dummy health server SGLang runs there. SIGTERM
drains (``/health`` 503, requests in flight finish) and exits 0; SIGINT stops at once. Exit code 2: the
command line or the manifest cannot be used (the reason on stderr).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from mimo_operator.errors import MimoError
from mimo_worker.simengine.options import OptionsError, parse_options, resolve_limits
from mimo_worker.simengine.replica import PlannedReplica, planned_replica, replica_from_argv
from mimo_worker.simengine.server import run_dummy_server, run_server

log = logging.getLogger("mimo_worker.simengine")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        first = parse_options(args, check=False)
        logging.basicConfig(
            level=first.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        replica: PlannedReplica | None = None
        base: list[str] = []
        if first.mimo_manifest is not None:
            replica = planned_replica(first.mimo_manifest, role=first.disaggregation_mode)
            # the plan's argv and the manifest's speedup, under whatever the command line says
            base = [*replica.server_args(0), "--mimo-speedup", f"{replica.speedup:g}"]
        options = parse_options(args, base)
        if options.node_rank >= 1:
            return asyncio.run(run_dummy_server(options))
        if replica is None:
            replica = replica_from_argv(options)
        limits = resolve_limits(replica.limits, options)
    except (OptionsError, MimoError, ValueError) as error:
        print(f"simengine: {error}", file=sys.stderr)
        return 2
    log.info("simulating %s", replica.summary_line())
    return asyncio.run(
        run_server(
            options,
            limits,
            replica.performance,
            attention_dp=options.attention_dp,
            extra_server_info=replica.server_info(),
            kv_transfer=replica.kv_transfer,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
