"""Which raster paths a served engine may open: the policy `serve` applies to every `ask`.

Since issue 20 this is the first layer only, kept for clear error messages: it predicts what GDAL
will open by re-reading GDAL's formats, and a prediction lags GDAL. The boundary that holds is
the kernel's: `serve` opens and reads every raster in reader processes confined by Landlock and
seccomp to the allowed roots with no network (`readers/`); tests attack with this policy off.

Why it exists: GDAL opens far more than files. A client-chosen path can make the server fetch
URLs (/vsicurl/...), block forever on a FIFO or /vsistdin/, or, through a VRT, chain to URLs and
turn /etc/passwd into pixels that reach the model. So, by default, a served raster is:

- a local *regular* file (checked with os.stat before GDAL sees the path; FIFOs, devices,
  sockets and directories are refused), passed to GDAL as its resolved absolute path, so that no
  `DRIVER:...` connection string, URL or /vsi prefix can hide in it;
- inside one of the allowed roots when roots are given (symlinks resolved first: a link that
  points out of a root is outside). A path outside the roots gets the same code and message
  whether it exists or not;
- of a format on an allow-list (GeoTIFF/COG, JPEG 2000, JPEG, PNG, GIF, BMP, WebP, VRT), as GDAL
  identifies it: drivers that fetch URLs (WMS, WMTS, WCS, HTTP...) or reference other files in
  their own way (MRF, ISIS/PDS labels, SAFE/DIMAP manifests, HDF5 links...) are not on it;
- a VRT only when every file it references (sources, warped/pansharpened inputs, overviews,
  mask bands; nested VRTs too) passes the same policy; raw raster bands and Python pixel
  functions are refused outright;
- with side-car files that pass too: GDAL opens the files beside a raster by name (X.ovr and
  X.msk with any driver, X.aux.xml whose OVERVIEW_FILE item names any dataset, world files...),
  so a FIFO there would block the engine's own open and a link or VRT there would leave the
  roots. Such files must be regular (directories aside) and inside the roots, .ovr/.msk files
  pass the whole policy, and an .aux.xml naming an OVERVIEW_FILE is refused.

Network rasters (/vsicurl/https://..., /vsis3/..., /vsigs/, /vsiaz/...) only with
`serve --allow-remote`; even then /vsicurl/ URLs whose host is or resolves to a loopback,
private or link-local address (cloud metadata endpoints) are refused. Every other /vsi file
system (/vsistdin/, /vsimem/, archives) is always refused.

`harden_gdal()` is the process-wide half of this, applied by `lrs-focus serve` only (it changes
GDAL for the whole process): it unregisters every raster driver not on the allow-list and,
without --allow-remote, makes GDAL's network file systems treat every remote file as absent.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import posixpath
import re
import socket
import stat
import xml.etree.ElementTree as ET  # nosec B405: input is size-capped and DTDs/entities are refused first
from dataclasses import dataclass, field
from typing import Iterable
from urllib.parse import urlsplit

from osgeo import gdal

from .errors import NotARaster, RasterForbidden, RasterNotFound, RasterUnreadable

gdal.UseExceptions()
log = logging.getLogger(__name__)

#: Formats served by default (GDAL short names). Each reads only the file it is given and its
#: own side-car files (.ovr, .aux.xml, .msk, world files); VRT is checked source by source.
DEFAULT_DRIVERS = frozenset({"GTiff", "COG", "JP2OpenJPEG", "JPEG", "PNG", "GIF", "BMP", "WEBP", "VRT"})
#: GDAL's random-access network file systems, allowed with --allow-remote.
NETWORK_PREFIXES = ("/vsicurl/", "/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/",
                    "/vsihdfs/", "/vsiwebhdfs/")
#: VRT elements whose text names another dataset (GDAL matches XML names case-insensitively).
VRT_REFERENCE_TAGS = frozenset({"sourcefilename", "sourcedataset"})
MAX_VRT_BYTES = 16 << 20
#: Side-car files that GDAL opens as datasets (with any driver): checked like the raster itself.
SIDECAR_DATASETS = (".ovr", ".msk")
MAX_VRT_DEPTH = 8
#: An extension no file has: GDAL's /vsicurl/ family then considers every remote file absent
#: (CPL_VSIL_CURL_ALLOWED_EXTENSIONS), so not a single request leaves the process.
NO_NETWORK_EXTENSION = ".lrs-focus-network-disabled"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
OUTSIDE_ROOTS = "the raster is not inside the folders this server may read"
_KIND = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


@dataclass(frozen=True)
class AccessPolicy:
    """`check(path)` -> the path to hand to GDAL, or a RasterError (`raster_forbidden`, ...).

    `roots`: allowed folders (empty: any local file). `allow_remote`: network rasters.
    `drivers`: GDAL short names that may open a raster. `allow_private_hosts` lets /vsicurl/
    reach loopback/private IP literals (tests only; not a command-line option).
    """

    roots: tuple[str, ...] = ()
    allow_remote: bool = False
    drivers: frozenset = DEFAULT_DRIVERS
    allow_private_hosts: bool = False
    _real_roots: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        real = []
        for root in self.roots:
            path = os.path.realpath(os.fspath(root))
            if not os.path.isdir(path):
                raise ValueError(f"allowed root {root!r} is not a directory")
            real.append(path)
        object.__setattr__(self, "_real_roots", tuple(real))

    # -- public -------------------------------------------------------------------------------
    def check(self, path: str) -> str:
        """The path GDAL should open (resolved), after checking it and, for a VRT, its sources."""
        return self._check(path, depth=0, seen=set(), passed={})

    def describe(self) -> dict:
        return {"roots": list(self._real_roots), "allow_remote": self.allow_remote, "drivers": sorted(self.drivers)}

    # -- the rules ----------------------------------------------------------------------------
    def _check(self, path: str, depth: int, seen: set, passed: dict) -> str:
        """`seen`: the resolved files above this one (a loop); `passed`: (path, depth) -> resolved of
        every file that passed in this check, so that a DAG of VRTs (8 levels of 20 sources: 20^8
        visits) costs one visit per file and depth. A passed file's whole tree was walked without a
        loop, so meeting it again needs no second walk: the answers stay those of the full walk."""
        known = passed.get((path, depth))
        if known is not None:
            if known in seen:
                raise RasterForbidden("the VRT references itself")
            return known
        if depth > MAX_VRT_DEPTH:
            raise RasterForbidden(f"VRTs nested deeper than {MAX_VRT_DEPTH} levels are not served")
        if not isinstance(path, str) or not path or "\x00" in path:
            raise RasterForbidden("not a valid file path")
        try:
            os.fsencode(path)
        except UnicodeError:
            raise RasterForbidden("not a valid file path (it cannot be encoded for the file system)") from None
        if path.lower().startswith("/vsi"):
            resolved = self._remote(path)
        elif _URL.match(path):
            raise RasterForbidden("URLs are not served as rasters"
                                  + ("; use GDAL's /vsicurl/ prefix" if self.allow_remote else ""))
        else:
            resolved = self._local(path)
        if resolved in seen:
            raise RasterForbidden("the VRT references itself")
        if not path.lower().startswith("/vsi"):
            self._check_sidecars(path, resolved, depth, seen | {resolved}, passed)
        driver = self._driver(resolved)
        if driver == "VRT":
            self._check_vrt(resolved, depth, seen | {resolved}, passed)
        passed[(path, depth)] = resolved
        return resolved

    def _local(self, path: str) -> str:
        real = os.path.realpath(path)  # resolves every symlink, relative to the server's cwd
        if self._real_roots and not any(_inside(real, root) for root in self._real_roots):
            raise RasterForbidden(OUTSIDE_ROOTS)  # before any existence check: reveals nothing
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            raise RasterNotFound(f"{path}: no such file") from None
        except PermissionError:
            raise RasterForbidden(f"{path}: permission denied") from None
        except OSError as exc:
            raise RasterUnreadable(f"{path}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            kind = _KIND.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise RasterForbidden(f"{path}: is {kind}, not a regular raster file")
        return real

    def _check_sidecars(self, path: str, resolved: str, depth: int, seen: set, passed: dict) -> None:
        """The files GDAL may open beside a raster (`_is_sidecar`), in the folder of the name
        GDAL is given (`resolved` for the asked raster, `path` for a VRT's source; both, to be safe)."""
        places = {(os.path.dirname(resolved), os.path.basename(resolved)),
                  (os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))}
        for folder, name in places:
            try:
                entries = [e.path for e in os.scandir(folder) if _is_sidecar(e.name, name)]
            except OSError:
                continue  # the raster's own checks report an unreadable folder
            for entry in entries:
                self._check_sidecar(name, entry, depth, seen, passed)

    def _check_sidecar(self, name: str, sidecar: str, depth: int, seen: set, passed: dict) -> None:
        shown = f"{name}: the file {os.path.basename(sidecar)!r} beside it"
        real = os.path.realpath(sidecar)
        if self._real_roots and not any(_inside(real, root) for root in self._real_roots):
            raise RasterForbidden(f"{shown} is not inside the folders this server may read")
        try:
            st = os.stat(real)
        except OSError:
            return  # a dangling link: GDAL cannot open it either
        if stat.S_ISDIR(st.st_mode):
            return
        if not stat.S_ISREG(st.st_mode):
            raise RasterForbidden(f"{shown} is {_KIND.get(stat.S_IFMT(st.st_mode), 'not a regular file')}")
        lower = sidecar.lower()
        if lower.endswith(SIDECAR_DATASETS) and real not in seen:
            try:
                self._check(sidecar, depth + 1, seen, passed)
            except (RasterForbidden, RasterNotFound, NotARaster, RasterUnreadable) as exc:
                raise RasterForbidden(f"{shown} is refused: {exc}") from None
        elif lower.endswith(".aux.xml"):
            try:
                data = _read_capped(real)
            except (OSError, RasterForbidden):
                raise RasterForbidden(f"{shown} cannot be checked") from None
            if b"OVERVIEW_FILE" in data.upper():
                raise RasterForbidden(f"{shown} names an OVERVIEW_FILE (any dataset): not served")

    def _remote(self, path: str) -> str:
        prefix = next((p for p in NETWORK_PREFIXES if path.startswith(p)), None)
        if prefix is None:
            raise RasterForbidden("GDAL virtual file systems other than the network ones (/vsicurl/, /vsis3/, ...) "
                                  "are not served")
        if not self.allow_remote:
            raise RasterForbidden("network rasters are not allowed on this server (it runs without --allow-remote)")
        if prefix == "/vsicurl/":
            text = path[len(prefix):]
            url = urlsplit(text)
            if url.scheme.lower() not in ("http", "https") or not url.hostname:
                raise RasterForbidden("/vsicurl/ rasters must be http:// or https:// URLs")
            if "@" in url.netloc or any(c in text for c in "\\ \t\r\n"):
                # user info, backslashes and blanks are where URL parsers disagree with curl
                raise RasterForbidden("/vsicurl/ URLs with user info, backslashes or blanks are not served")
            if not self.allow_private_hosts and _private_host(url.hostname):
                raise RasterForbidden("/vsicurl/ URLs must name a host that resolves to public addresses only "
                                      "(not loopback, private or link-local)")
        return path

    def _driver(self, path: str) -> str:
        try:
            driver = gdal.IdentifyDriverEx(path, gdal.OF_RASTER)
        except RuntimeError as exc:
            raise NotARaster(f"{path}: GDAL cannot identify it ({exc})") from None
        if driver is None:
            raise NotARaster(f"{path}: not a raster format GDAL recognises")
        name = driver.ShortName
        if name not in self.drivers:
            raise RasterForbidden(f"{path}: {name} files are not served (formats allowed: {', '.join(sorted(self.drivers))})")
        return name

    def _check_vrt(self, path: str, depth: int, seen: set, passed: dict) -> None:
        base = posixpath.dirname(path) if path.startswith("/vsi") else os.path.dirname(path)
        for element in _parse_vrt(path).iter():
            if not isinstance(element.tag, str):
                continue  # a comment or processing instruction
            tag, attrs = _local_name(element.tag), _attributes(element, path)
            if tag == "vrtrasterband" and attrs.get("subclass", "").lower() == "vrtrawrasterband":
                raise RasterForbidden(f"{path}: VRT raw raster bands (any file read as pixels) are not served")
            if tag == "pixelfunctioncode" or (tag == "pixelfunctionlanguage"
                                              and (element.text or "").strip().lower() != "c"):
                raise RasterForbidden(f"{path}: VRT pixel functions in Python are not served")
            if tag == "openoptions":
                raise RasterForbidden(f"{path}: VRT source open options are not served")
            if tag in VRT_REFERENCE_TAGS or "relativetovrt" in attrs:
                self._check_source(path, base, element, attrs, depth, seen, passed)

    def _check_source(self, path: str, base: str, element: ET.Element, attrs: dict, depth: int, seen: set,
                      passed: dict) -> None:
        source = element.text or ""
        if len(element) or not source or source != source.strip():
            # GDAL reads the first text node as is: anything else could name another file
            raise RasterForbidden(f"{path}: a VRT source name must be plain text")
        relative = attrs.get("relativetovrt", "0").strip().lower() not in ("0", "false", "no", "off")
        if relative and not source.startswith("/"):
            source = posixpath.join(base, source) if path.startswith("/vsi") else os.path.join(base, source)
        try:
            self._check(source, depth + 1, seen, passed)
        except (RasterForbidden, RasterNotFound, NotARaster, RasterUnreadable) as exc:
            raise type(exc)(f"a source of {path} is refused: {exc}") from None


def _is_sidecar(candidate: str, name: str) -> bool:
    """GDAL's side-cars of `name`: name.EXT... (.ovr, .msk, .aux.xml), stem.EXT (world files,
    .aux, .imd, .rpb) and stem_rpc.txt, whatever the case."""
    low, name = candidate.lower(), name.lower()
    stem = os.path.splitext(name)[0]
    return low != name and (low.startswith(name + ".") or low == stem + "_rpc.txt"
                            or (low.startswith(stem + ".") and "." not in low[len(stem) + 1:]))


def _local_name(name: str) -> str:
    """GDAL's XML reader ignores namespaces and case: so does the check."""
    return name.rsplit("}", 1)[-1].lower()


def _attributes(element: ET.Element, path: str) -> dict:
    attrs: dict = {}
    for key, value in element.attrib.items():
        name = _local_name(key)
        if name in attrs:  # GDAL would read the first one, a dict the last
            raise RasterForbidden(f"{path}: VRT element with a repeated attribute {name!r}")
        attrs[name] = value
    return attrs


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _private_host(host: str) -> bool:
    """True unless every address `host` stands for is global. getaddrinfo also reads the numeric
    forms curl accepts ("2130706433", "127.1", "0x7f.1"); a name that does not resolve counts as
    private. DNS may answer differently when curl asks again (rebinding): not covered."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return True
    addresses = {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}
    return not addresses or any(not a.is_global for a in addresses)


def _read_capped(path: str) -> bytes:
    if path.startswith("/vsi"):
        handle = gdal.VSIFOpenL(path, "rb")
        if handle is None:
            raise RasterUnreadable(f"{path}: cannot be read")
        try:
            data = gdal.VSIFReadL(1, MAX_VRT_BYTES + 1, handle)
        finally:
            gdal.VSIFCloseL(handle)
    else:
        with open(path, "rb") as f:
            data = f.read(MAX_VRT_BYTES + 1)
    if len(data) > MAX_VRT_BYTES:
        raise RasterForbidden(f"{path}: VRT larger than {MAX_VRT_BYTES >> 20} MiB")
    return data


def _parse_vrt(path: str) -> ET.Element:
    try:
        data = _read_capped(path)
    except OSError as exc:
        raise RasterUnreadable(f"{path}: {exc.strerror or exc}") from None
    upper = data.upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper or b"<![CDATA[" in upper:
        raise RasterForbidden(f"{path}: VRTs with a DTD, entities or CDATA are not served")
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))  # nosec B314
    try:
        parser.feed(data)  # DTDs and entities were refused above
        return parser.close()
    except ET.ParseError as exc:
        raise RasterForbidden(f"{path}: VRT XML that this server cannot check ({exc})") from None


def harden_gdal(policy: AccessPolicy, keep: Iterable[str] = ("MEM",)) -> list[str]:
    """Process-wide GDAL settings behind the policy; returns the unregistered driver names.

    Unregisters every raster driver not in `policy.drivers` (plus `keep`), so that even a
    driver identification the policy got wrong cannot open a forbidden format; turns off VRT
    Python pixel functions and PROJ's network grids; without remote access makes the /vsicurl/
    family consider every remote file absent. Call once, before serving (it is not undoable).
    """
    allowed = set(policy.drivers) | set(keep)
    removed = []
    for i in reversed(range(gdal.GetDriverCount())):
        driver = gdal.GetDriver(i)
        if driver.GetMetadataItem(gdal.DCAP_RASTER) and driver.ShortName not in allowed:
            removed.append(driver.ShortName)
            driver.Deregister()
    gdal.SetConfigOption("GDAL_VRT_ENABLE_PYTHON", "NO")
    try:
        from osgeo import osr

        osr.SetPROJEnableNetwork(False)
    except (ImportError, AttributeError, RuntimeError):  # pragma: no cover - old PROJ/GDAL
        os.environ["PROJ_NETWORK"] = "OFF"
    if not policy.allow_remote:
        gdal.SetConfigOption("CPL_VSIL_CURL_ALLOWED_EXTENSIONS", NO_NETWORK_EXTENSION)
    elif gdal.GetConfigOption("GDAL_HTTP_TIMEOUT") is None:
        gdal.SetConfigOption("GDAL_HTTP_TIMEOUT", "30")
    log.debug("GDAL hardened: %d raster drivers unregistered", len(removed))
    return sorted(removed)
