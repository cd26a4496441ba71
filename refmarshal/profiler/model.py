"""One profiled run as a tree of module imports: built from the child's records (collect.py) or
from a ``-X importtime`` log (importtime.py).  Times are in seconds."""

from dataclasses import dataclass, field

PHASES = ("find", "load", "exec", "other")


@dataclass
class ModuleTiming:
    name: str
    parent: int | None          # index of the enclosing import in the run (the timing tree)
    importer: str               # the module whose code asked for it first ("__main__": the target)
    origin: str                 # image, pyc, source, built-in, frozen, extension, namespace, ...
    cumulative: float
    self_time: float            # cumulative minus nested imports
    find: float | None = None   # None: unknown (an importtime log has no phases)
    load: float | None = None
    exec_self: float | None = None
    other: float | None = None  # import bookkeeping: locks, module attributes, sys.modules
    ok: bool = True             # False when the import raised
    children: list = field(default_factory=list)

    def phase(self, name):
        return {"find": self.find, "load": self.load, "exec": self.exec_self,
                "other": self.other}[name]


@dataclass
class Run:
    label: str                  # "image", "stock" or "importtime"
    modules: list
    status: str = "ok"          # ok, exit (non-zero exit), raised (uncaught exception)
    message: str = ""
    exit_code: int = 0
    target_time: float | None = None        # the target's wall time, instrumented
    plain_target_time: float | None = None  # the same target without instrumentation
    target_cpu: float | None = None         # CPU time of the target, instrumented ...
    plain_target_cpu: float | None = None   # ... and not: unlike wall time, not inflated by
                                            # other processes on a busy machine
    repeats: int = 1            # runs made of each kind; this one is the fastest timed run
    image_active: bool = False
    install_time: float = 0.0   # installing the image finder, before the target started
    find_overhead: float = 0.0  # the profiler's own share of each module's find figure (s)
    version: str = ""
    importtime: dict = field(default_factory=dict)  # name -> cumulative from -X importtime

    @property
    def has_phases(self):
        return any(m.find is not None for m in self.modules)

    @property
    def roots(self):
        return [i for i, m in enumerate(self.modules) if m.parent is None]

    @property
    def total(self):
        return sum(self.modules[i].cumulative for i in self.roots)

    def phase_total(self, name):
        return sum(m.phase(name) or 0.0 for m in self.modules)

    def first(self, name):
        """The first import of a module by that name (later ones only happen after a failure)."""
        for m in self.modules:
            if m.name == name:
                return m
        return None

    def chain(self, module):
        """Import chain from the target down to module, following first importers."""
        names, seen = [module.name], {module.name}
        current = module
        while current.importer != "__main__":
            names.append(current.importer)
            current = self.first(current.importer)
            if current is None or current.name in seen:
                break
            seen.add(current.name)
        else:
            names.append("__main__")
        return names[::-1]

    def link_children(self):
        for m in self.modules:
            m.children.clear()
        for i, m in enumerate(self.modules):
            if m.parent is not None:
                self.modules[m.parent].children.append(i)
        return self

    def to_json(self):
        return {
            "run": self.label, "python": self.version, "status": self.status,
            "message": self.message, "image_active": self.image_active,
            "install_seconds": self.install_time,
            "find_overhead_seconds": self.find_overhead,
            "target_seconds": self.target_time,
            "uninstrumented_target_seconds": self.plain_target_time,
            "target_cpu_seconds": self.target_cpu,
            "uninstrumented_target_cpu_seconds": self.plain_target_cpu,
            "totals": {"import": self.total, **{p: self.phase_total(p) for p in PHASES}}
            if self.has_phases else {"import": self.total},
            "modules": [{
                "name": m.name, "origin": m.origin, "first_importer": m.importer,
                "parent": m.parent, "find": m.find, "load": m.load, "exec_self": m.exec_self,
                "other": m.other, "self": m.self_time, "cumulative": m.cumulative, "ok": m.ok,
                **({"importtime_cumulative": self.importtime[m.name]}
                   if m.name in self.importtime else {}),
            } for m in self.modules],
        }


def from_collect(data, label):
    """A Run from the dict collect.main() marshals (nanosecond integers)."""
    ns = 1e-9
    modules = []
    for name, parent, importer, origin, cum, find, load, exec_gross, child, ok in data["records"]:
        c_other, c_find, c_load, c_exec = child
        self_ns = cum - sum(child)
        find_self = find - c_find
        load_self = load - c_load
        exec_self = exec_gross - load - c_exec
        modules.append(ModuleTiming(
            name=name, parent=None if parent < 0 else parent, importer=importer, origin=origin,
            cumulative=cum * ns, self_time=self_ns * ns, find=find_self * ns,
            load=load_self * ns, exec_self=exec_self * ns,
            other=(self_ns - find_self - load_self - exec_self) * ns, ok=ok))
    return Run(label=label, modules=modules, status=data["status"], message=data["message"],
               exit_code=data["exit_code"], target_time=data["target_ns"] * ns,
               target_cpu=data["target_cpu_ns"] * ns,
               image_active=data["image_active"], install_time=data["install_ns"] * ns,
               find_overhead=data.get("find_overhead_ns", 0) * ns,
               version=data["version"]).link_children()
