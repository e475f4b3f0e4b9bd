"""Hydra's Optuna sweeper, ending a search in which no trial completed with one line, not a traceback.

Why a plugin of its own: when every trial fails (a data path that does not exist, a size no trial
can take), the Optuna sweeper asks the study for its best trial after the last one and Optuna
raises ``ValueError: No trials are completed yet``, which Hydra prints as a 20-line traceback after
the trials' own ``error:`` lines. The cause is already on screen; the search has no best
parameters to report. Hydra instantiates a sweeper only from the ``hydra_plugins`` namespace
package (``Plugins._instantiate``), so the subclass that catches it lives here, and
``configs/hparams_search/optuna.yaml`` names it as the sweeper's ``_target_``.

The module imports nothing heavy: Hydra's plugin scanner imports every module of the namespace at
each start. Without the ``sweep`` extra (hydra-optuna-sweeper) it defines nothing.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: Optuna's answer to ``study.best_trial`` when no trial completed (``optuna.storages``)
NO_COMPLETED_TRIAL = "No trials are completed yet"

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the sweep extra is not installed: nothing to extend
    pass
else:

    class FailedTrialNoise(logging.Filter):
        """Drops the sweeper's "Failed experiment: Return value must be float-castable. Got 'None'."
        A failed trial returns no value by design (resflex.train.run_task), its cause is on the line
        before; the sweeper's words read as a fault of the return value."""

        def filter(self, record: logging.LogRecord) -> bool:
            return "must be float-castable. Got 'None'" not in record.getMessage()

    class ResflexOptunaSweeper(OptunaSweeper):
        """:class:`OptunaSweeper` whose search, when no trial completed, ends without a best trial:
        the entry point then reports the failed trials and exits with their count."""

        def setup(self, **kwargs: Any) -> None:
            super().setup(**kwargs)
            impl_log = logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl")
            if not any(isinstance(f, FailedTrialNoise) for f in impl_log.filters):
                impl_log.addFilter(FailedTrialNoise())

        def sweep(self, arguments: list[str]) -> Any:
            try:
                return super().sweep(arguments)
            except ValueError as exc:
                if NO_COMPLETED_TRIAL not in str(exc):
                    raise
                log.error("no trial completed: the search has no best parameters (see the trials' errors)")
                return None
