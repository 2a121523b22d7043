"""Plugin object: provider registration, menu and toolbar."""
from qgis.core import QgsApplication, QgsMessageLog, Qgis

from . import environment
from .provider import LcmsrProvider, plugin_icon
from .settings import Settings

MENU = "&LCMSR Super-Resolution"


class LcmsrPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.actions = []
        environment.add_extra_python_path(Settings().extra_python_path)

    # Processing is registered here as well as from initGui so qgis_process (which calls only this) sees it.
    def initProcessing(self):  # noqa: N802
        if self.provider is None:
            self.provider = LcmsrProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)
        ok, message = environment.backend_status()
        if not ok:
            QgsMessageLog.logMessage(message, "LCMSR", Qgis.MessageLevel.Warning)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtWidgets import QAction

        run = QAction(plugin_icon(), "Super-resolve active layer…", self.iface.mainWindow())
        run.triggered.connect(self.superresolve_active_layer)
        settings = QAction(plugin_icon(), "Settings and models…", self.iface.mainWindow())
        settings.triggered.connect(self.open_settings)
        # The Raster menu is where analysts look; interfaces without it (test doubles) get the Plugins menu.
        add = getattr(self.iface, "addPluginToRasterMenu", None) or self.iface.addPluginToMenu
        for action in (run, settings):
            add(MENU, action)
            self.actions.append(action)
        self.iface.addToolBarIcon(run)
        self._offer_torch_install()

    def _offer_torch_install(self):
        """Without torch, the message bar says so once, with a button to the dialog that installs it."""
        ok, message = environment.backend_status()
        bar = getattr(self.iface, "messageBar", lambda: None)()
        if ok or bar is None:
            return
        if not hasattr(bar, "pushWidget"):   # a bar that takes text only (test doubles)
            bar.pushMessage("LCMSR", message, Qgis.MessageLevel.Warning, 0)
            return
        from qgis.gui import QgsMessageBar
        from qgis.PyQt.QtWidgets import QPushButton

        widget = QgsMessageBar.createMessage("LCMSR", message.split(";")[0])
        button = QPushButton("Install PyTorch…", widget)
        button.clicked.connect(self.open_settings)
        widget.layout().addWidget(button)
        bar.pushWidget(widget, Qgis.MessageLevel.Warning)

    def unload(self):
        remove = getattr(self.iface, "removePluginRasterMenu", None) or getattr(self.iface, "removePluginMenu", None)
        for action in self.actions:
            if remove is not None:
                remove(MENU, action)
            self.iface.removeToolBarIcon(action)
        self.actions = []
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        from .model_cache import model_cache

        model_cache().clear()  # cached models may hold GPU memory; a reloaded plugin loads them afresh

    def open_settings(self):
        from .ui.settings_dialog import SettingsDialog

        SettingsDialog(self.iface.mainWindow() if self.iface else None).exec()

    def superresolve_active_layer(self):
        from .tasks import start_superresolve_active_layer

        start_superresolve_active_layer(self.iface)
