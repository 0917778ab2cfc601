"""One upload -> its canonical slice, doing only the work a request needs.

An upload is known first by the SHA-256 of its raw bytes. For each upload it has decoded, the
gateway keeps an *upload record* in the result cache (same Redis, same TTL):

    <prefix>:upload:<sha256 of the raw bytes>:p<pipeline>:s<nifti_slice or auto>
        -> {"sha256": <sha256 of the canonical pixels>, "canonical": <PNG data URL, once a response needed it>}

so a repeated upload whose result is cached is answered without decoding anything: two Redis
reads (record, then result). Otherwise the upload is decoded and canonicalised in the decode
pool (:func:`alzprog.decode.decode_slice`, :func:`alzprog.preprocessing.canonical_image`),
once per set of identical concurrent uploads (single-flight on the raw hash), and the record
is stored. ``<pipeline>`` is a fingerprint of the decode and preprocessing source, so code
that canonicalises differently never reuses an old record. A record that is not valid JSON,
lacks ``sha256`` or holds a malformed hash or image is a miss, like any corrupt cache value.

The brain mask (CPU work worth avoiding: docs/performance.md) is computed only when the generator needs it
(:meth:`Upload.mask`); ``/predict`` never needs it (the classifier computes its own for
Grad-CAM). It is ``alzprog.preprocessing.brain_mask`` of the canonical image, as everywhere.

Privacy: keys hold hashes; values hold a hash and the canonical pixels re-encoded as a
metadata-free PNG, never the uploaded bytes or a file name.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common import metrics
from services.common.admission import AdmissionLimiter
from services.common.errors import ServiceError
from services.gateway.cache import ResultCache, SingleFlight

log = logging.getLogger("gateway.uploads")
PNG_DATA_URL = "data:image/png;base64,"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# Hash bodies larger than this off the event loop, so a large upload does not stall other requests.
_HASH_INLINE_BYTES = 1 << 20


def pipeline_fingerprint() -> str:
    """12 hex digits over the source of ``alzprog.decode``, ``alzprog.preprocessing`` and ``alzprog.quality``."""
    h = hashlib.sha256()
    for name in ("alzprog.decode", "alzprog.preprocessing", "alzprog.quality"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"{name} not found")
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:12]


@dataclass(frozen=True)
class CanonicalPixels:
    """The canonical image (read-only uint8, 256 x 256) and the SHA-256 the result cache uses."""

    image: np.ndarray
    sha256: str


def decode_to_canonical(data: bytes, nifti_slice: int | None) -> CanonicalPixels:
    """Decode (allowlisted formats only), canonicalise and pass the quality gate
    (:mod:`alzprog.quality`: a 422 for what is not a brain MRI slice), without the mask; runs in the pool."""
    from alzprog.decode import ImageDecodeError, decode_slice
    from alzprog.preprocessing import canonical_image, canonical_sha256
    from alzprog.quality import NotABrainSlice, assess

    image = canonical_image(decode_slice(data, nifti_slice=nifti_slice))
    try:
        assess(image)
    except NotABrainSlice as exc:
        raise ImageDecodeError(exc.code, exc.message, 422) from None
    return CanonicalPixels(image, canonical_sha256(image))


@dataclass(frozen=True)
class VolumeSlices:
    """The slices of an uploaded volume picked for staging, canonicalised (:mod:`alzprog.volume`)."""

    indices: list[int]
    pixels: list[CanonicalPixels]
    brain_area_fraction: list[float]
    shape: tuple[int, int, int]  # (slices, height, width) of the reoriented axial volume
    orientation: str  # the file's axis codes before reorienting
    widest: int
    scanned: int


def decode_volume_slices(data: bytes) -> VolumeSlices:
    """Decode a NIfTI volume, pick its slices in the trained level range and canonicalise
    each (the one preprocessing path); runs in the pool."""
    from alzprog.preprocessing import canonical_image, canonical_sha256
    from alzprog.volume import decode_volume, select_slices

    volume = decode_volume(data)
    choice = select_slices(volume)
    pixels = []
    for z in choice.indices:
        image = canonical_image(volume.slices[z])
        pixels.append(CanonicalPixels(image, canonical_sha256(image)))
    return VolumeSlices(
        indices=choice.indices, pixels=pixels, brain_area_fraction=[choice.brain_area_fraction[z] for z in choice.indices],
        shape=tuple(int(v) for v in volume.slices.shape), orientation=volume.orientation, widest=choice.widest,
        scanned=choice.scanned,
    )


def png_data_url(image: np.ndarray) -> str:
    """The canonical slice as a metadata-free PNG data URL (what the models saw)."""
    from alzprog.decode import png_data_url as data_url

    return data_url(image)


def compute_brain_mask(image: np.ndarray) -> np.ndarray:
    from alzprog.preprocessing import brain_mask

    return brain_mask(image)


def _valid_record(record: dict, need_png: bool) -> bool:
    sha = record.get("sha256")
    if not isinstance(sha, str) or not _HEX64.match(sha):
        return False
    png = record.get("canonical")
    if png is not None and not (isinstance(png, str) and png.startswith(PNG_DATA_URL)):
        return False
    return png is not None or not need_png


class Decoder:
    """The gateway's CPU work on uploads: a thread pool behind a bounded queue, plus the records.

    ``decodes``, ``masks`` and ``pngs`` count the work done (tests check that a hit does none).
    """

    def __init__(self, cache: ResultCache, flights: SingleFlight, workers: int, queue: int) -> None:
        self.cache = cache
        self.flights = flights
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
        self.limiter = AdmissionLimiter(workers, queue)
        self.pipeline = pipeline_fingerprint()
        self.decodes = 0
        self.masks = 0
        self.pngs = 0

    async def run(self, kind: str, fn, *args):  # noqa: ANN001, ANN202 - thin executor wrapper
        """Run ``fn(*args)`` in the pool under the decode queue's admission control."""
        async with self.limiter.admit():
            out = await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        metrics.GATEWAY_WORK.labels(kind).inc()
        return out

    async def upload(self, data: bytes, nifti_slice: int | None) -> "Upload":
        """An :class:`Upload` for these bytes (hashed off the event loop when large)."""
        if len(data) > _HASH_INLINE_BYTES:
            raw = await asyncio.get_running_loop().run_in_executor(None, lambda: hashlib.sha256(data).hexdigest())
        else:
            raw = hashlib.sha256(data).hexdigest()
        return Upload(self, data, nifti_slice, raw)

    async def volume(self, data: bytes) -> VolumeSlices:
        """:func:`decode_volume_slices` in the pool; bad bytes become a 4xx :class:`ServiceError`."""
        from alzprog.decode import ImageDecodeError

        try:
            out = await self.run("volume", decode_volume_slices, data)
        except ImageDecodeError as exc:
            status = exc.status if 400 <= int(exc.status) < 500 else 422
            raise ServiceError(status, exc.code, exc.message) from None
        self.decodes += 1
        return out

    async def decode(self, data: bytes, nifti_slice: int | None) -> CanonicalPixels:
        from alzprog.decode import ImageDecodeError

        try:
            pixels = await self.run("decode", decode_to_canonical, data, nifti_slice)
        except ImageDecodeError as exc:
            status = exc.status if 400 <= int(exc.status) < 500 else 422
            raise ServiceError(status, exc.code, exc.message) from None
        self.decodes += 1
        return pixels

    def close(self) -> None:
        self.pool.shutdown(wait=False)


class Upload:
    """One request's upload: canonical hash first (record or decode), pixels, PNG and mask on demand."""

    def __init__(self, decoder: Decoder, data: bytes, nifti_slice: int | None, raw_sha256: str) -> None:
        self.decoder = decoder
        self.data = data
        self.nifti_slice = nifti_slice
        options = "sauto" if nifti_slice is None else f"s{nifti_slice}"
        self.record_key = decoder.cache.key("upload", raw_sha256, f"p{decoder.pipeline}", options)
        self.sha256: str | None = None
        self.image: np.ndarray | None = None
        self._png: str | None = None
        self._mask: asyncio.Task | None = None

    @property
    def decoded(self) -> bool:
        """True once this request has the pixels (it decoded them, or shared a twin's decode)."""
        return self.image is not None

    async def resolve(self, need_png: bool = False) -> str:
        """The canonical SHA-256: from the upload record when it has what the request needs,
        else by decoding (which stores the record)."""
        record = await self.decoder.cache.get(self.record_key, required=("sha256",))
        if record is not None:
            if _valid_record(record, need_png):
                self.sha256 = record["sha256"]
                self._png = record.get("canonical")
                return self.sha256
            if not _valid_record(record, False):
                metrics.CACHE_EVENTS.labels("corrupt").inc()
                log.warning("corrupt upload record ignored")
        await self.pixels()
        if need_png:
            await self.png()
        await self._store()
        assert self.sha256 is not None
        return self.sha256

    async def pixels(self) -> np.ndarray:
        """The canonical image, decoding the upload if this request has not yet."""
        if self.image is None:
            d = self.decoder
            pixels: CanonicalPixels = await d.flights.run("decode:" + self.record_key, lambda: d.decode(self.data, self.nifti_slice))
            stale = self.sha256 is not None and self.sha256 != pixels.sha256
            self.sha256, self.image = pixels.sha256, pixels.image
            if stale:
                # A record naming other pixels (tampered, or a hash clash): the pixels win.
                log.warning("upload record disagreed with the decoded pixels; replaced")
                self._png = None
                await self._store()
        return self.image

    async def png(self) -> str:
        """The canonical slice as a PNG data URL (from the record, else encoded once)."""
        if self._png is None:
            image = await self.pixels()
            self._png = await self.decoder.run("png", png_data_url, image)
            self.decoder.pngs += 1
        return self._png

    def start_mask(self) -> None:
        """Begin computing the brain mask in the pool (to overlap with a backend call)."""
        if self._mask is None:
            self._mask = asyncio.ensure_future(self._compute_mask())
            # Mark a failure retrieved even if nobody awaits the mask (the request may not need it).
            self._mask.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def mask(self) -> np.ndarray:
        """``alzprog.preprocessing.brain_mask`` of the canonical image, computed once."""
        self.start_mask()
        assert self._mask is not None
        return await self._mask

    async def _compute_mask(self) -> np.ndarray:
        image = await self.pixels()
        mask = await self.decoder.run("brain_mask", compute_brain_mask, image)
        self.decoder.masks += 1
        return mask

    async def _store(self) -> None:
        value = {"sha256": self.sha256}
        if self._png is not None:
            value["canonical"] = self._png
        await self.decoder.cache.set(self.record_key, value)


class SliceUpload:
    """One already-canonicalised slice of a volume, with the interface of :class:`Upload`
    (hash, pixels, PNG and mask on demand), so the classifier and generator calls serve both."""

    decoded = True

    def __init__(self, decoder: Decoder, pixels: CanonicalPixels) -> None:
        self.decoder = decoder
        self.sha256: str = pixels.sha256
        self.image = pixels.image
        self._png: str | None = None
        self._mask: asyncio.Task | None = None

    async def resolve(self, need_png: bool = False) -> str:
        """The canonical SHA-256 (known already)."""
        if need_png:
            await self.png()
        return self.sha256

    async def pixels(self) -> np.ndarray:
        """The canonical image."""
        return self.image

    async def png(self) -> str:
        """The canonical slice as a PNG data URL, encoded once."""
        if self._png is None:
            self._png = await self.decoder.run("png", png_data_url, self.image)
            self.decoder.pngs += 1
        return self._png

    def start_mask(self) -> None:
        """Begin computing the brain mask in the pool."""
        if self._mask is None:
            self._mask = asyncio.ensure_future(self.decoder.run("brain_mask", compute_brain_mask, self.image))
            self._mask.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def mask(self) -> np.ndarray:
        """``alzprog.preprocessing.brain_mask`` of the canonical image, computed once."""
        self.start_mask()
        assert self._mask is not None
        return await self._mask
