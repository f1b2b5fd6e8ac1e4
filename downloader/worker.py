"""The work on one photo: read its bytes, validate, crop each box, save; never raises for a bad photo."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from . import images
from .fetch import UNREACHABLE, FetchError, RetryAfter
from .plan import Output, PhotoJob, failure


@dataclass
class Outcome:
    """What one job gave: images saved, failures; or ``retry_in`` seconds (the host asked us to come back).

    ``host_refused``: the host asked to be left alone for longer than ``max_wait``; the failure reason of
    its other photos, which are not requested in this run. ``unreachable``: the host did not answer
    (connection error or timeout)."""

    saved: list[Output] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    retry_in: float | None = None
    host_refused: str | None = None
    unreachable: bool = False


class Worker:
    """Fetch, validate, crop and save the images of one photo.

    A ``Retry-After`` answer is put back (``Outcome.retry_in``) at most ``retries`` times and only when it
    asks for at most ``max_wait`` seconds; after that it is a failure like any other.
    """

    def __init__(self, out: Path, retries: int, max_wait: float) -> None:
        self.out = out
        self.retries = retries
        self.max_wait = max_wait

    def __call__(self, job: PhotoJob) -> Outcome:
        try:
            image = images.decode(job.location.read())
        except RetryAfter as error:
            if error.seconds <= self.max_wait and job.waits < self.retries:
                job.waits += 1
                return Outcome(retry_in=error.seconds)
            return self._waited_enough(job, error)
        except (FetchError, images.ImageError) as error:
            unreachable = isinstance(error, FetchError) and error.reason in UNREACHABLE
            return Outcome(failures=[failure(job, str(error))], unreachable=unreachable)
        return self._save(job, image)

    def _waited_enough(self, job: PhotoJob, error: RetryAfter) -> Outcome:
        """A failure once ``Retry-After`` asks for over ``max_wait`` (then the host's other photos are not
        requested either) or came ``retries`` times."""
        asked = f"{error.reason}: Retry-After {error.seconds:g} s"
        if error.seconds > self.max_wait:
            others = f"not requested: the host asked to wait {error.seconds:g} s ({error.reason}), over --max-wait"
            return Outcome(failures=[failure(job, f"{asked}, over --max-wait")], host_refused=others)
        return Outcome(failures=[failure(job, f"{asked}, still after {job.waits} waits")])

    def _save(self, job: PhotoJob, image: Image.Image) -> Outcome:
        """Crop (or keep whole) and save each image still to make; a bad box fails that image only."""
        outcome = Outcome()
        for output in job.todo:
            try:
                picture = images.whole(image) if output.bbox is None else images.crop(image, output.bbox)
            except images.ImageError as error:
                outcome.failures.append(failure(job, f"bad box: {error}", output))
                continue
            except (ValueError, TypeError, SyntaxError, OSError) as error:  # Pillow, on a strange image
                outcome.failures.append(failure(job, f"truncated or corrupt image: {error}"[:300], output))
                continue
            images.save_jpeg(picture, self.out / output.path)  # a disk error here stops the run
            outcome.saved.append(output)
        return outcome
