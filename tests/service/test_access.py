"""access.AccessPolicy: which paths a served engine may open (hostile paths and VRTs, real GDAL).

Every hostile VRT here is first shown to work against plain GDAL (it reads /etc/passwd as pixels,
or makes HTTP requests), so a policy that let it through would fail these tests.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from osgeo import gdal

from lrs_focus import errors
from lrs_focus.access import OUTSIDE_ROOTS, AccessPolicy

from .conftest import small_geotiff

gdal.UseExceptions()


@pytest.fixture
def tree(tmp_path):
    """root/ (allowed) with a GeoTIFF, and outside/ next to it with another one."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    small_geotiff(root / "ok.tif")
    small_geotiff(outside / "secret.tif")
    return root, outside


def refused(policy: AccessPolicy, path) -> errors.LrsFocusError:
    with pytest.raises(errors.RasterError) as info:
        policy.check(str(path))
    return info.value


def vrt(path: Path, body: str, size: int = 64) -> Path:
    path.write_text(f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">{body}</VRTDataset>')
    return path


def band(source: str, relative: int = 0, tag: str = "SourceFilename") -> str:
    return (f'<VRTRasterBand dataType="Byte" band="1"><SimpleSource><{tag} relativeToVRT="{relative}">{source}'
            f'</{tag}><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>')


def test_local_regular_files_pass_resolved(tree, monkeypatch):
    root, _ = tree
    policy = AccessPolicy(roots=(str(root),))
    assert policy.check(str(root / "ok.tif")) == os.path.realpath(root / "ok.tif")
    monkeypatch.chdir(root)
    assert policy.check("ok.tif") == os.path.realpath(root / "ok.tif"), "relative paths resolve from the cwd"
    (root / "link.tif").symlink_to(root / "ok.tif")
    assert policy.check(str(root / "link.tif")) == os.path.realpath(root / "ok.tif")
    assert AccessPolicy().check(str(root / "ok.tif")), "no roots: any local raster file"


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "socket"])
def test_only_regular_files(tree, kind):
    root, _ = tree
    path = root / kind
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/null")
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    exc = refused(AccessPolicy(), path)
    assert exc.code == "raster_forbidden" and "not a regular" in str(exc)


def test_outside_the_roots_reveals_nothing(tree, tmp_path):
    root, outside = tree
    policy = AccessPolicy(roots=(str(root),))
    (root / "escape.tif").symlink_to(outside / "secret.tif")
    (root / "dangling.tif").symlink_to(outside / "missing.tif")
    paths = [outside / "secret.tif", outside / "missing.tif", outside, Path("/etc/passwd"), Path("/no/such/dir/x.tif"),
             root / "escape.tif", root / "dangling.tif", root / ".." / "outside" / "secret.tif", Path(str(root) + "x")]
    answers = {(e.code, str(e)) for e in (refused(policy, p) for p in paths)}
    assert answers == {("raster_forbidden", OUTSIDE_ROOTS)}, "one code and message, whether the path exists or not"
    assert refused(policy, root / "missing.tif").code == "raster_not_found", "inside a root, absence may be said"


@pytest.mark.parametrize("path", ["/vsistdin/", "/vsimem/x.tif", "/vsizip//tmp/a.zip/x.tif", "/vsisubfile/0_10,/etc/passwd",
                                  "/VSICURL/http://127.0.0.1:9/x.tif", "/vsicurl_streaming/http://127.0.0.1:9/x.tif",
                                  "http://127.0.0.1:9/x.tif", "HTTPS://example.com/x.tif", "ftp://example.com/x.tif",
                                  "/vsis3/bucket/x.tif", "/vsigs/bucket/x.tif", "/vsiaz/c/x.tif", "\ud800.tif", "a\x00b"])
def test_virtual_file_systems_and_urls_refused_by_default(path):
    assert refused(AccessPolicy(), path).code == "raster_forbidden"


def test_connection_strings_are_just_missing_files(tree, monkeypatch):
    root, _ = tree
    monkeypatch.chdir(root)
    for text in ("PG:dbname=x", "WMS:http://127.0.0.1:9/", f"vrt://{root}/ok.tif?bands=1",
                 f"GTIFF_DIR:1:{root}/ok.tif", "<VRTDataset/>", "MEM:::DATAPOINTER=0x1,PIXELS=1,LINES=1"):
        assert refused(AccessPolicy(), text).code in ("raster_not_found", "raster_forbidden"), text
    (root / "PG:dbname=x").write_bytes((root / "ok.tif").read_bytes())  # a file named like a connection string
    assert AccessPolicy().check("PG:dbname=x") == str(root / "PG:dbname=x"), "opened as the file, by absolute path"


def test_network_rasters_need_allow_remote_and_never_touch_the_network_otherwise(http_server, tree):
    root, _ = tree
    http_server.files["/ok.tif"] = (root / "ok.tif").read_bytes()
    url = "/vsicurl/" + http_server.url("ok.tif")
    gdal.OpenEx(url)  # GDAL alone fetches it: the counter works
    assert http_server.requests
    http_server.requests.clear()
    assert refused(AccessPolicy(), url).code == "raster_forbidden"
    exc = refused(AccessPolicy(allow_remote=True), url)
    assert exc.code == "raster_forbidden" and "public addresses" in str(exc), "loopback stays refused"
    assert refused(AccessPolicy(allow_remote=True), "/vsicurl/http://169.254.169.254/latest/x.tif").code == \
        "raster_forbidden"
    assert refused(AccessPolicy(allow_remote=True), "/vsicurl/file:///etc/passwd").code == "raster_forbidden"
    for sneaky in (f"http://2130706433:{http_server.port}/ok.tif", f"http://127.1:{http_server.port}/ok.tif",
                   f"http://0x7f.0.0.1:{http_server.port}/ok.tif", f"http://[::1]:{http_server.port}/ok.tif",
                   f"http://localhost:{http_server.port}/ok.tif", f"http://x@127.0.0.1:{http_server.port}/ok.tif",
                   f"http://example.com\\@127.0.0.1:{http_server.port}/ok.tif", "http://no-such-host.invalid/x.tif"):
        assert refused(AccessPolicy(allow_remote=True), "/vsicurl/" + sneaky).code == "raster_forbidden", sneaky
    assert http_server.requests == [], "no refused path may cause a request"
    http_server.files["/fresh.tif"] = http_server.files["/ok.tif"]  # GDAL caches what it fetched for ok.tif
    fresh = "/vsicurl/" + http_server.url("fresh.tif")
    assert AccessPolicy(allow_remote=True, allow_private_hosts=True).check(fresh) == fresh
    assert http_server.requests, "allowed remote rasters are read from the network"


def test_remote_vrt_cannot_reach_local_files(http_server, tree):
    root, _ = tree
    body = band("/etc/passwd")
    http_server.files["/a.vrt"] = f'<VRTDataset rasterXSize="64" rasterYSize="64">{body}</VRTDataset>'.encode()
    exc = refused(AccessPolicy(roots=(str(root),), allow_remote=True, allow_private_hosts=True),
                  "/vsicurl/" + http_server.url("a.vrt"))
    assert exc.code == "raster_forbidden" and OUTSIDE_ROOTS in str(exc)


def test_vrt_sources_obey_the_same_policy(tree, http_server):
    root, outside = tree
    policy = AccessPolicy(roots=(str(root),))
    assert policy.check(str(vrt(root / "good.vrt", band("ok.tif", relative=1))))
    assert policy.check(str(vrt(root / "nested.vrt", band("good.vrt", relative=1))))
    # a source outside the roots: same answer whether it exists or not
    a = refused(policy, vrt(root / "out1.vrt", band(str(outside / "secret.tif"))))
    b = refused(policy, vrt(root / "out2.vrt", band(str(outside / "nothing.tif"))))
    c = refused(policy, vrt(root / "out3.vrt", band("../outside/secret.tif", relative=1)))
    assert {x.code for x in (a, b, c)} == {"raster_forbidden"}
    assert {str(x).replace("out1", "outN").replace("out2", "outN").replace("out3", "outN") for x in (a, b, c)} == {
        f"a source of {root / 'outN.vrt'} is refused: {OUTSIDE_ROOTS}"}
    assert str(outside) not in str(a) + str(b) + str(c)
    # nested: a VRT inside the root pointing at a VRT that escapes
    assert refused(policy, vrt(root / "chain.vrt", band("out1.vrt", relative=1))).code == "raster_forbidden"
    # a URL source, and a URL source one VRT deeper: refused without a single request
    http_server.files["/ok.tif"] = (root / "ok.tif").read_bytes()
    url_vrt = vrt(root / "url.vrt", band("/vsicurl/" + http_server.url("ok.tif")))
    gdal.Open(str(url_vrt)).ReadRaster()
    assert http_server.requests, "the hostile VRT really fetches the URL with plain GDAL"
    http_server.requests.clear()
    assert refused(policy, url_vrt).code == "raster_forbidden"
    assert refused(policy, vrt(root / "url2.vrt", band("url.vrt", relative=1))).code == "raster_forbidden"
    assert http_server.requests == []


def raw_band(source: str) -> str:
    return (f'<VRTRasterBand dataType="Byte" band="1" subClass="VRTRawRasterBand"><SourceFilename relativeToVRT="0">'
            f'{source}</SourceFilename><ImageOffset>0</ImageOffset><PixelOffset>1</PixelOffset>'
            f'<LineOffset>8</LineOffset></VRTRasterBand>')


def test_raw_bands_would_read_passwd_and_are_refused(tree):
    root, _ = tree
    hostile = vrt(root / "raw.vrt", raw_band("/etc/passwd"), size=8)
    assert gdal.Open(str(hostile)).ReadRaster()[:5] == b"root:", "plain GDAL turns /etc/passwd into pixels"
    for policy in (AccessPolicy(), AccessPolicy(roots=(str(root),))):
        assert refused(policy, hostile).code == "raster_forbidden"
    inside = vrt(root / "raw_inside.vrt", raw_band(str(root / "ok.tif")), size=8)
    assert refused(AccessPolicy(roots=(str(root),)), inside).code == "raster_forbidden"


def test_non_raster_sources_are_refused_without_roots(tree):
    root, _ = tree
    assert refused(AccessPolicy(), vrt(root / "p.vrt", band("/etc/passwd"))).code == "not_a_raster"


@pytest.mark.parametrize("trick", [
    # GDAL ignores namespaces and case in VRT XML: a default namespace must not hide a source
    '<VRTDataset xmlns="urn:x" rasterXSize="64" rasterYSize="64">{band}</VRTDataset>',
    '<VRTDataset rasterXSize="64" rasterYSize="64">{lower}</VRTDataset>',
    # a comment splitting the name: GDAL reads only the text before it
    '<VRTDataset rasterXSize="64" rasterYSize="64">{split}</VRTDataset>',
    # the same attribute twice in different case: GDAL reads the first
    '<VRTDataset rasterXSize="64" rasterYSize="64">{twice}</VRTDataset>',
    '<!DOCTYPE x [<!ENTITY e "{secret}">]><VRTDataset rasterXSize="64" rasterYSize="64">{entity}</VRTDataset>',
    '<VRTDataset rasterXSize="64" rasterYSize="64">{cdata}</VRTDataset>',
    '<VRTDataset rasterXSize="64" rasterYSize="64">{python}</VRTDataset>',
    '<VRTDataset rasterXSize="64" rasterYSize="64">{options}</VRTDataset>',
    '<VRTDataset rasterXSize="64" rasterYSize="64">{spaces}</VRTDataset>',
    '<VRTDataset rasterXSize="64" rasterYSize="64">{warped}</VRTDataset>',
])
def test_vrt_xml_tricks_are_refused(tree, trick):
    root, outside = tree
    secret = str(outside / "secret.tif")
    parts = {
        "band": band(secret), "secret": secret, "lower": band(secret, tag="sourcefilename"),
        "split": band(secret + "<!-- x -->/../../root/ok.tif").replace(str(outside), str(outside)),
        "twice": band("../outside/secret.tif", relative=0).replace('relativeToVRT="0"',
                                                                    'relativeToVRT="1" relativetovrt="0"'),
        "entity": band("&e;"), "cdata": band(f"<![CDATA[{secret}]]>"),
        "python": ('<VRTRasterBand dataType="Byte" band="1" subClass="VRTDerivedRasterBand">'
                   "<PixelFunctionType>f</PixelFunctionType><PixelFunctionLanguage>Python</PixelFunctionLanguage>"
                   "<PixelFunctionCode>def f(*a, **k): pass</PixelFunctionCode></VRTRasterBand>"),
        "options": band("ok.tif", relative=1).replace("<SourceBand>", "<OpenOptions><OOI key=\"ROOT_PATH\">/</OOI>"
                                                                      "</OpenOptions><SourceBand>"),
        "spaces": band(f" {secret}"),
        "warped": f'<GDALWarpOptions><SourceDataset relativeToVRT="0">{secret}</SourceDataset></GDALWarpOptions>',
    }
    path = root / "trick.vrt"
    path.write_text(trick.format(**parts))
    exc = refused(AccessPolicy(roots=(str(root),)), path)
    assert exc.code == "raster_forbidden", (exc.code, str(exc))
    assert str(outside) not in str(exc)


def overview_file(target: str) -> str:
    return f'<PAMDataset><Metadata domain="OVERVIEWS"><MDI key="OVERVIEW_FILE">{target}</MDI></Metadata></PAMDataset>'


def test_side_cars_that_gdal_opens_obey_the_policy(tree):
    """GDAL opens X.aux.xml's OVERVIEW_FILE (any dataset) and X.ovr / X.msk (any driver) beside
    a raster, and reads world files: each is shown to reach the outside file with plain GDAL."""
    import shutil

    root, outside = tree
    policy = AccessPolicy(roots=(str(root),))
    for name in ("aux.tif", "ovr.tif", "msk.tif", "fifo.tif", "vrtovr.tif", "fine.tif"):
        shutil.copy(root / "ok.tif", root / name)
    secret = str(outside / "secret.tif")
    (root / "aux.tif.aux.xml").write_text(overview_file(secret))
    (root / "ovr.tif.ovr").symlink_to(secret)
    (root / "msk.tif.msk").symlink_to(secret)
    for name in ("aux.tif", "ovr.tif"):
        ds = gdal.Open(str(root / name))
        assert secret in ds.GetFileList() + [os.path.realpath(f) for f in ds.GetFileList()], name
        assert ds.GetRasterBand(1).GetOverviewCount() == 1, "plain GDAL reads the outside file as an overview"
    vrt(root / "vrtovr.tif.ovr", raw_band("/etc/passwd"), size=32)
    os.mkfifo(root / "fifo.tfw")
    (root / "fine.tif.aux.xml").write_text('<PAMDataset><Metadata><MDI key="a">b</MDI></Metadata></PAMDataset>')
    shutil.copy(root / "ok.tif", root / "fine.tif.ovr")
    (root / "fine.tif.d").mkdir()
    (root / "fine_2020.tif").symlink_to(secret)  # not a side-car GDAL opens
    for name in ("aux.tif", "ovr.tif", "msk.tif", "fifo.tif", "vrtovr.tif"):
        exc = refused(policy, root / name)
        assert exc.code == "raster_forbidden", (name, exc.code, str(exc))
        assert str(outside) not in str(exc)
    (root / "vrt.vrt").write_text(f'<VRTDataset rasterXSize="64" rasterYSize="64">{band("aux.tif", relative=1)}'
                                  "</VRTDataset>")
    assert refused(policy, root / "vrt.vrt").code == "raster_forbidden", "a VRT source's side-cars too"
    assert refused(AccessPolicy(), root / "aux.tif").code == "raster_forbidden", "an OVERVIEW_FILE, roots or not"
    assert policy.check(str(root / "fine.tif")) == os.path.realpath(root / "fine.tif")


def test_self_reference_and_depth(tree):
    root, _ = tree
    vrt(root / "loop.vrt", band("loop.vrt", relative=1))
    assert refused(AccessPolicy(), root / "loop.vrt").code == "raster_forbidden"
    vrt(root / "d0.vrt", band("ok.tif", relative=1))
    for i in range(1, 12):
        vrt(root / f"d{i}.vrt", band(f"d{i - 1}.vrt", relative=1))
    assert AccessPolicy().check(str(root / "d5.vrt"))
    assert "nested deeper" in str(refused(AccessPolicy(), root / "d11.vrt"))


def test_formats_off_the_allow_list(tree):
    root, _ = tree
    wms = root / "service.xml"
    wms.write_text("<GDAL_WMS><Service name=\"TMS\"><ServerUrl>http://127.0.0.1:9/${z}/${x}/${y}.png</ServerUrl>"
                   "</Service><DataWindow><UpperLeftX>0</UpperLeftX><UpperLeftY>0</UpperLeftY><LowerRightX>1</LowerRightX>"
                   "<LowerRightY>1</LowerRightY><TileLevel>1</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY>"
                   "</DataWindow></GDAL_WMS>")
    exc = refused(AccessPolicy(), wms)
    assert exc.code == "raster_forbidden" and "WMS" in str(exc)
    (root / "notes.txt").write_text("hello")
    assert refused(AccessPolicy(), root / "notes.txt").code == "not_a_raster"


HARDEN_SCRIPT = """
import json, sys
from osgeo import gdal
from lrs_focus.access import AccessPolicy, harden_gdal
gdal.UseExceptions()
removed = harden_gdal(AccessPolicy(allow_remote=False))
out = {"removed_wms": "WMS" in removed, "gtiff": gdal.GetDriverByName("GTiff") is not None,
       "vrt": gdal.GetDriverByName("VRT") is not None, "python": gdal.GetConfigOption("GDAL_VRT_ENABLE_PYTHON")}
for name in ("url", "wms"):
    try:
        gdal.OpenEx(sys.argv[1] if name == "url" else sys.argv[2])
        out[name] = "opened"
    except RuntimeError:
        out[name] = "refused"
out["tif"] = gdal.OpenEx(sys.argv[3]).RasterXSize
print(json.dumps(out))
"""


def test_harden_gdal_blocks_the_network_even_past_the_policy(tree, http_server):
    """The process-wide half (what `serve` applies): a /vsicurl/ open that skipped the policy
    still sends no request, and network drivers are gone; GeoTIFF still opens."""
    import json

    root, _ = tree
    http_server.files["/ok.tif"] = (root / "ok.tif").read_bytes()
    wms = root / "service.xml"
    wms.write_text(f"<GDAL_WMS><Service name=\"TMS\"><ServerUrl>{http_server.url('${{z}}/${{x}}/${{y}}.png')}"
                   "</ServerUrl></Service><DataWindow><UpperLeftX>0</UpperLeftX><UpperLeftY>0</UpperLeftY>"
                   "<LowerRightX>1</LowerRightX><LowerRightY>1</LowerRightY><TileLevel>1</TileLevel>"
                   "<TileCountX>1</TileCountX><TileCountY>1</TileCountY></DataWindow></GDAL_WMS>")
    done = subprocess.run([sys.executable, "-c", HARDEN_SCRIPT, "/vsicurl/" + http_server.url("ok.tif"), str(wms),
                           str(root / "ok.tif")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"removed_wms": True, "gtiff": True, "vrt": True, "python": "NO", "url": "refused",
                   "wms": "refused", "tif": 64}
    assert http_server.requests == []


def test_a_dag_of_vrts_is_walked_once_per_file(tree, monkeypatch):
    """8 levels of 20 sources each: the full walk visits 20^8 paths, the memoised one each file
    once per depth (a cap on visits makes the old walk fail fast instead of spinning for hours)."""
    from .attack_rasters import vrt_dag

    root, outside = tree
    top = vrt_dag(root)
    visits = []
    real = AccessPolicy._local

    def counted(self, path):
        visits.append(path)
        if len(visits) > 10_000:
            raise AssertionError("the walk visits the DAG exponentially")
        return real(self, path)

    monkeypatch.setattr(AccessPolicy, "_local", counted)
    policy = AccessPolicy(roots=(str(root),))
    t0 = time.perf_counter()
    assert policy.check(top) == os.path.realpath(top)
    assert time.perf_counter() - t0 < 1.0
    assert len(visits) <= 9 * 20 + 1  # each of the 9 files from each of its 20 parents
    # a source out of the roots at the bottom of the DAG is still found, and a loop still refused
    (root / "dag" / "leaf.tif").unlink()
    (root / "dag" / "leaf.tif").symlink_to(small_geotiff(outside / "far.tif"))
    visits.clear()
    assert refused(policy, top).code == "raster_forbidden"
    (root / "dag" / "leaf.tif").unlink()
    vrt(root / "dag" / "leaf.tif", band(str(root / "dag" / "level1.vrt")), size=16)
    visits.clear()
    assert "references itself" in str(refused(policy, root / "dag" / "level1.vrt"))
