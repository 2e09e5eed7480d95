"""What a study records beside its runs: the rounds of a sequential study, each model's costs,
the measured memory-layout choices, kept weights and deployments. A mixin of ``Store``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from study.store.claims import _run_row
from study.store.schema import (
    Base,
    Cell,
    DeploymentRow,
    LayoutChoiceRow,
    ModelCostRow,
    RunRow,
    RunWeightsRow,
    SequentialRoundRow,
)


class StudyRecords:
    """``Store``'s records beside the runs; each written once (``_add_once``) or updated in place."""

    # -- sequential studies (--until-ci) ------------------------------------------------------
    def sequential_rounds(self, study_id: int) -> list[SequentialRoundRow]:
        """The study's sequential decisions in order; none in a database written before them."""
        if not inspect(self.engine).has_table(SequentialRoundRow.__tablename__):
            return []
        with self.session() as s:
            q = select(SequentialRoundRow).where(SequentialRoundRow.study_id == study_id)
            return list(s.scalars(q.order_by(SequentialRoundRow.round)))

    def add_round(
        self,
        study_id: int,
        reason: str,
        cells: list[tuple[Cell, int, float]],
        short: list[dict],
        target: dict,
        spent_hours: float,
    ) -> int:
        """Record one sequential decision and add its (cell, n_train, fraction) runs, in one
        transaction: a killed study finds both or neither. A stop that repeats the latest
        decision (a resumed study that stops again for the same reason) adds no row. Returns
        how many runs were added."""
        with self.session(write=True) as s:
            existing = set(s.scalars(select(RunRow.cell_key).where(RunRow.study_id == study_id)))
            new = [(c, n, frac) for c, n, frac in cells if c.key not in existing]
            last = s.scalar(
                select(SequentialRoundRow)
                .where(SequentialRoundRow.study_id == study_id)
                .order_by(SequentialRoundRow.round.desc())
                .limit(1)
            )
            if not new and last is not None and (last.reason, last.target, last.short) == (reason, target, short):
                return 0
            s.add(
                SequentialRoundRow(
                    study_id=study_id,
                    round=(last.round if last is not None else 0) + 1,
                    reason=reason,
                    added=[c.key for c, _, _ in new],
                    short=short,
                    target=target,
                    spent_hours=spent_hours,
                )
            )
            s.add_all(_run_row(study_id, c, n, frac) for c, n, frac in new)
            return len(new)

    # -- model costs --------------------------------------------------------------------------
    def model_costs(self, study_id: int) -> list[ModelCostRow]:
        """The costs measured for the study's models (one row per model)."""
        with self.session() as s:
            return list(
                s.scalars(select(ModelCostRow).where(ModelCostRow.study_id == study_id).order_by(ModelCostRow.id))
            )

    def save_model_costs(self, study_id: int, model: str, fields: dict[str, Any]) -> bool:
        """Store one model's costs at ``fields["input_size"]`` unless they are stored already (by
        this or another process); returns whether this call stored them."""
        with self.session() as s:
            if (
                s.scalar(
                    select(ModelCostRow.id).where(
                        ModelCostRow.study_id == study_id,
                        ModelCostRow.model == model,
                        ModelCostRow.input_size == fields["input_size"],
                    )
                )
                is not None
            ):
                return False
        return self._add_once(ModelCostRow(study_id=study_id, model=model, **fields))

    # -- layout choices -----------------------------------------------------------------------
    def layout_choice(self, study_id: int, key: str, measure: Callable[[], bool]) -> bool:
        """The study's channels-last choice for ``key``: the stored one, else ``measure()``'s,
        stored unless another worker stored its own first (then that one is used)."""

        def stored() -> bool | None:
            with self.session() as s:
                return s.scalar(
                    select(LayoutChoiceRow.channels_last).where(
                        LayoutChoiceRow.study_id == study_id, LayoutChoiceRow.key == key
                    )
                )

        choice = stored()
        if choice is not None:
            return bool(choice)
        measured = measure()
        return (
            measured
            if self._add_once(LayoutChoiceRow(study_id=study_id, key=key, channels_last=measured))
            else bool(stored())
        )

    # -- deployment (issue 17) ----------------------------------------------------------------
    def save_weights(self, run_id: int, data: bytes, best_only: bool = False, format: str = "safetensors") -> bool:
        """Keep a finished run's trained weights (replacing any kept before for it); returns
        whether they were kept. ``best_only``: keep one run per (arm, size), the best by
        validation accuracy and then the lowest seed, whichever order the runs finish in: the
        run's weights are kept only if they beat those kept, which are then dropped."""
        with self.session(write=True) as s:
            run = s.get(RunRow, run_id)
            if best_only:
                rivals = s.execute(
                    select(RunRow.id, RunRow.val_acc, RunRow.seed)
                    .join(RunWeightsRow, RunWeightsRow.run_id == RunRow.id)
                    .where(
                        RunRow.study_id == run.study_id,
                        RunRow.arm == run.arm,
                        RunRow.size_kind == run.size_kind,
                        RunRow.size_value == run.size_value,
                        RunRow.id != run_id,
                    )
                ).all()
                mine = (run.val_acc or 0.0, -run.seed)
                if any((acc or 0.0, -seed) >= mine for _, acc, seed in rivals):
                    return False
                for rival_id, _, _ in rivals:
                    s.delete(s.get(RunWeightsRow, rival_id))
            row = s.get(RunWeightsRow, run_id)
            if row is None:
                s.add(RunWeightsRow(run_id=run_id, format=format, data=data))
            else:
                row.format, row.data = format, data
            return True

    def weights(self, run_id: int) -> bytes | None:
        """A run's kept weights (safetensors bytes), or None."""
        if not inspect(self.engine).has_table(RunWeightsRow.__tablename__):
            return None
        with self.session() as s:
            return s.scalar(select(RunWeightsRow.data).where(RunWeightsRow.run_id == run_id))

    def runs_with_weights(self, study_id: int) -> set[int]:
        """Ids of the study's runs whose weights are kept."""
        if not inspect(self.engine).has_table(RunWeightsRow.__tablename__):
            return set()
        with self.session() as s:
            query = select(RunWeightsRow.run_id).join(RunRow, RunRow.id == RunWeightsRow.run_id)
            return set(s.scalars(query.where(RunRow.study_id == study_id)))

    def deployments(self, study_id: int) -> list[DeploymentRow]:
        """The study's measured variants; none in a database written before deployment existed."""
        if not inspect(self.engine).has_table(DeploymentRow.__tablename__):
            return []
        with self.session() as s:
            q = select(DeploymentRow).where(DeploymentRow.study_id == study_id)
            return list(s.scalars(q.order_by(DeploymentRow.run_id, DeploymentRow.id)))

    def save_deployment(self, study_id: int, run_id: int, runtime: str, precision: str, fields: dict[str, Any]) -> bool:
        """Store one variant of a run unless it is stored already; returns whether this call did."""
        row = DeploymentRow(study_id=study_id, run_id=run_id, runtime=runtime, precision=precision, **fields)
        return self._add_once(row)

    def _add_once(self, row: Base) -> bool:
        """Add ``row`` unless a unique constraint says another process added its twin first;
        returns whether this call added it."""
        try:
            with self.session() as s:
                s.add(row)
            return True
        except IntegrityError:
            return False
