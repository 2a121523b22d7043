"""Which bands of the active layer the model gets ("Super-resolve active layer").

One row per band the model takes (its role: red, green, blue ...), each a list of the layer's
bands; or, for a band-wise model, one tick per layer band.  The rows start at what the backend's
band plan (:func:`lcmsr.domain.plan_bands`, by role) would choose, so OK without a change is the
automatic choice; where that plan fails, the rows start in band order and the dialog shows why.
"""
from __future__ import annotations

from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QVBoxLayout,
)

from lcmsr.domain import Domain, DomainError, plan_bands


class BandsDialog(QDialog):
    def __init__(self, layer_name: str, facts, info, terms, parent=None):
        """``facts``: lcmsr.domain.InputFacts of the layer's file; ``info``: the model's ModelInfo."""
        super().__init__(parent)
        self.setWindowTitle(f"Bands of '{layer_name}'")
        domain = getattr(info, "domain", None) or Domain()
        self.bandwise = bool(domain.bandwise)
        try:
            planned, why, _ = plan_bands(domain, int(info.bands), facts, None, terms)
        except DomainError as exc:
            planned, why = None, str(exc)
        self.problem = "" if planned is not None else why
        layout = QVBoxLayout(self)
        if self.bandwise:
            kinds = ", ".join(domain.trained_roles) or "any"
            text = f"The model super-resolves bands one at a time (trained on {kinds}). Bands to super-resolve:"
        else:
            kinds = ", ".join(domain.band_roles) if domain.known else "in its own order"
            text = f"The model takes {info.bands} band(s) ({kinds}). For each, the layer's band:"
        self.intro = QLabel(text + ("" if planned is None else f"\n(Preset: {why}.)"))
        self.intro.setWordWrap(True)
        layout.addWidget(self.intro)
        if self.problem:
            warning = QLabel(self.problem)
            warning.setWordWrap(True)
            layout.addWidget(warning)
        # The layer's bands and, where known, their kinds: "band 1 (red)", "band 5".
        names = [f"band {b}" + (f" ({role})" if role else "") for b, role in enumerate(facts.roles, start=1)]
        self.rows: list = []
        form = QFormLayout()
        if self.bandwise:
            chosen = set(planned or range(1, facts.band_count + 1))
            for b, name in enumerate(names, start=1):
                box = QCheckBox(name)
                box.setChecked(b in chosen)
                self.rows.append(box)
                form.addRow(box)
        else:
            preset = planned or [min(i + 1, facts.band_count) for i in range(int(info.bands))]
            roles = domain.band_roles if domain.known else [f"band {i + 1}" for i in range(int(info.bands))]
            for role, b in zip(roles, preset):
                combo = QComboBox()
                for name in names:
                    combo.addItem(name)
                combo.setCurrentIndex(b - 1)
                self.rows.append(combo)
                form.addRow(f"{role}:", combo)
        layout.addLayout(form)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def bands(self) -> list[int]:
        """The chosen 1-based band numbers, in the model's order."""
        if self.bandwise:
            return [i + 1 for i, box in enumerate(self.rows) if box.isChecked()]
        return [combo.currentIndex() + 1 for combo in self.rows]
