"""The lean launcher: `detour` (or `python -m addon run`), a mitmproxy master with only what Detour needs.

mitmdump dispatches every hook of every flow through its ~32 default addons, most of which Detour
never uses (anticache, map-remote, server replay, HAR export...): measured, that dispatch is about a
third of mitmdump's CPU per request. This master carries the event log, the one-line flow output,
the proxy server and its TLS and layer logic, `block` (which keeps refusing non-local clients,
`block_global`), script loading (users may still add `-s` scripts; they run after Detour, as they
would behind `-s addon/detour.py`), the start-up error check, and the few addons that act at their
defaults (KEPT says which and why).

It takes mitmdump's own command line. An option that belongs to an addon this master leaves out
(`--anticache`, `-w`, `--set map_remote=...`, or such a key in the confdir's config.yaml) is refused
by name with the way out: mitmdump with the `-s` shim runs everything as before.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import addonmanager, addons, exceptions, master, options, optmanager
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    dns_resolver,
    dumper,
    errorcheck,
    keepserving,
    next_layer,
    onboarding,
    proxyserver,
    readfile,
    script,
    strip_dns_https_records,
    termlog,
    tlsconfig,
    update_alt_svc,
)
from mitmproxy.tools import cmdline
from mitmproxy.tools import main as mitmproxy_main

from addon.mitm import hooktable
from addon.mitm.addon import Detour

logger = logging.getLogger("detour")
WAY_OUT = "use mitmdump -s addon/detour.py"
SHIM = Path(__file__).resolve().parent.parent / "detour.py"


#: mitmdump's default addons that the lean master keeps. Besides what Detour needs, those that act at
#: their defaults without being asked (`onboarding` answers http://mitm.it/ in regular mode,
#: `update_alt_svc` keeps reverse-mode clients on the proxy, `strip_dns_https_records` strips ECH in
#: DNS mode): leaving one out would change behaviour with no option there to refuse.
KEPT = (
    core.Core,
    block.Block,
    strip_dns_https_records.StripDnsHttpsRecords,
    disable_h2c.DisableH2C,
    onboarding.Onboarding,
    proxyserver.Proxyserver,
    dns_resolver.DnsResolver,
    script.ScriptLoader,
    next_layer.NextLayer,
    tlsconfig.TlsConfig,
    update_alt_svc.UpdateAltSvc,
)


class LeanMaster(master.Master):
    """mitmdump's default addons that are in KEPT, in mitmdump's own order (it differs between
    mitmproxy versions), with Detour where `-s addon/detour.py` puts it: just before the script
    loader, so hooks reach Detour before further scripts; then the flow output and the start-up
    error check, as in mitmdump."""

    def __init__(self, opts: options.Options) -> None:
        super().__init__(opts)
        # Events go only to the addons that implement them (hooktable.py says why), while this
        # mitmproxy's AddonManager is the one the table knows.
        if hooktable.usable():
            self.options.changed.disconnect(self.addons._configure_all)
            self.addons = hooktable.HookTable(self)
        else:
            logger.warning("detour: mitmproxy's addon manager changed: every addon sees every event (slower)")
        self._termlog_addon = termlog.TermLog()
        self.addons.add(self._termlog_addon)
        kept = [addon for addon in addons.default_addons() if isinstance(addon, KEPT)]
        scripts = next(i for i, addon in enumerate(kept) if isinstance(addon, script.ScriptLoader))
        self.addons.add(*kept[:scripts], Detour(), *kept[scripts:], dumper.Dumper(), errorcheck.ErrorCheck())


def mitmdump_options() -> options.Options:
    """Every option mitmdump has: the core's and those each of its addons declares in `load`.

    Built by loading fresh instances of mitmdump's addons into a throwaway Options (their `load`
    only declares options), so the list follows the installed mitmproxy version."""
    every = options.Options()
    registrar = types.SimpleNamespace(options=every, commands=types.SimpleNamespace(add=lambda *_: None))
    loader = addonmanager.Loader(registrar)
    event_log = termlog.TermLog()
    event_log.uninstall()  # a TermLog installs a process-wide log handler when made; this one only declares
    for instance in [
        *addons.default_addons(),
        dumper.Dumper(),
        keepserving.KeepServing(),
        readfile.ReadFileStdin(),
        event_log,
    ]:
        load = getattr(instance, "load", None)
        if load is not None:
            load(loader)
    return every


def unsupported_options(
    args: argparse.Namespace, every: Iterable[str], supported: Iterable[str], confdir_keys: Iterable[str] = ()
) -> list[str]:
    """Options mitmdump has and this master doesn't, that the command line or the confdir's
    config.yaml sets. Names neither knows are left to mitmproxy, as mitmdump leaves them: a `-s`
    script may declare them."""
    dropped = set(every) - set(supported)
    named = {name for name, value in vars(args).items() if value is not None}
    named |= {setting.partition("=")[0].strip() for setting in args.setoptions or ()}
    named |= set(confdir_keys)
    return sorted(named & dropped)


def confdir_config_keys(args: argparse.Namespace, default_confdir: str) -> list[str]:
    """The option names in the confdir's config.yaml/config.yml, which mitmproxy loads at start-up."""
    confdir = default_confdir
    for setting in args.setoptions or ():
        name, _, value = setting.partition("=")
        if name.strip() == "confdir":
            confdir = value
    keys: list[str] = []
    for filename in ("config.yaml", "config.yml"):
        path = Path(confdir).expanduser() / filename
        try:
            keys += list(optmanager.parse(path.read_text(encoding="utf8")))
        except (OSError, UnicodeDecodeError, exceptions.OptionsError, TypeError):
            continue  # missing here; a broken file is reported by mitmproxy with its own message
    return keys


class LeanParser:
    """mitmdump's argument parser, refusing what the lean master can't honour.

    `mitmproxy.tools.main.run` only calls `parse_args`; a refusal exits like a parse error."""

    def __init__(self, supported: options.Options) -> None:
        self.every = mitmdump_options()
        self.parser = cmdline.mitmdump(self.every)
        self.parser.prog = "detour"
        self.supported = supported

    def parse_args(self, arguments: Sequence[str] | None) -> argparse.Namespace:
        args: argparse.Namespace = self.parser.parse_args(arguments)
        refused = unsupported_options(
            args,
            self.every.keys(),
            self.supported.keys(),
            confdir_config_keys(args, self.supported.confdir),
        )
        if refused:
            self.parser.exit(2, f"detour: {refusal(refused)}\n")
        if any(is_detour_shim(path) for path in args.scripts or ()):
            self.parser.exit(
                2, "detour: Detour is already loaded by this launcher; drop -s addon/detour.py\n"
            )
        return args


def is_detour_shim(script: str) -> bool:
    """Whether `-s` names Detour's own shim: loaded twice, two Detours would route every flow."""
    try:
        return Path(script).expanduser().resolve() == SHIM
    except OSError:
        return False


def refusal(names: Sequence[str]) -> str:
    listed = ", ".join(names)
    noun = "option" if len(names) == 1 else "options"
    return (
        f"{noun} {listed} not supported by the lean launcher (it runs only the addons Detour "
        f"needs); {WAY_OUT}"
    )


def flow_filter(args: Any) -> dict[str, str]:
    """mitmdump's positional filter: here it filters the flow output (nothing is saved)."""
    if args.filter_args:
        return {"dumper_filter": " ".join(args.filter_args)}
    return {}


def main(arguments: Sequence[str] | None = None) -> int:
    """Run Detour on the lean master until interrupted; mitmdump's exit codes."""
    argv = list(sys.argv[1:] if arguments is None else arguments)
    mitmproxy_main.run(LeanMaster, LeanParser, argv, flow_filter)  # type: ignore[arg-type]
    return 0
