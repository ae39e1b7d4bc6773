"""Is an intact model's alignment map plausible? Loud warnings for maps that are not.

A language model's features predict the BOLD of people listening to a story in the
language network (bilateral temporal cortex, left inferior frontal gyrus, the temporo-
parietal junction), not everywhere. A map where the intact model aligns in nearly every
voxel of the brain, or more often outside that network than inside it, usually means
that something other than language drives the fit: non-steady-state volumes at a run's
start (bright first volumes that every feature set "predicts" through its onset), motion,
an annotation paired with the wrong run, or features that only carry the word rate.

The network is approximated by spheres (:data:`NETWORK_RADIUS_MM`) around the six left
ROIs of Pallier, Devauchelle & Dehaene (2011, PNAS 108:2522, "Cortical representation of
the constituent structure of sentences") and their right-hemisphere mirrors; only volume
results in MNI space are checked (regions have no coordinates).
"""

from __future__ import annotations

import numpy as np

#: MNI centres (mm) of the left-hemisphere language ROIs of Pallier et al. (2011): temporal
#: pole, anterior and posterior STS, temporo-parietal junction, IFG orbitalis, triangularis
NETWORK_LEFT = ((-48.0, 15.0, -27.0), (-54.0, -12.0, -12.0), (-51.0, -39.0, 3.0),
                (-52.0, -56.0, 22.0), (-45.0, 33.0, -6.0), (-51.0, 21.0, 21.0))
#: the radius of each sphere (mm)
NETWORK_RADIUS_MM = 20.0
#: aligned in at least this fraction of the mask: "almost everywhere"
EVERYWHERE_FRACTION = 0.9
#: the network / outside comparison needs this many voxels on each side and aligned
MIN_VOXELS = 20


def network_mask(coordinates: np.ndarray) -> np.ndarray:
    """Which of the MNI ``coordinates`` (n, 3) lie in the approximate language network
    (both hemispheres)."""
    xyz = np.asarray(coordinates, dtype=float)
    centres = np.array([c for x, y, z in NETWORK_LEFT for c in ((x, y, z), (-x, y, z))])
    d = np.linalg.norm(xyz[:, None, :] - centres[None, :, :], axis=2)
    return (d <= NETWORK_RADIUS_MM).any(axis=1)


CAUSES = ("non-steady-state volumes at the runs' start (set [data].confounds, or "
          "[data].dummy_scans for raw runs), head motion (a confound strategy such as "
          "\"simple\"), annotations paired with the wrong runs or a wrong TR, or features "
          "that carry only the word rate (compare with the word-rate control)")


def alignment_warnings(code: str, space, aligned: np.ndarray | None) -> list[str]:
    """Warnings for an implausible group map of the intact model in language ``code``.

    ``aligned``: the voxels where the intact model's group test passes. Two cases:
    aligned in at least :data:`EVERYWHERE_FRACTION` of the mask, or (with at least
    :data:`MIN_VOXELS` voxels aligned, inside and outside the network) in a larger share
    of the voxels outside the language network than inside it.
    """
    if aligned is None or getattr(space, "kind", None) != "volume":
        return []
    aligned = np.asarray(aligned, dtype=bool)
    n, k = aligned.size, int(aligned.sum())
    if n == 0 or k == 0:
        return []
    if k >= EVERYWHERE_FRACTION * n:
        return [f"{code}: WARNING the intact model aligns in {k} of {n} voxels "
                f"({100 * k / n:.0f} % of the brain mask): a language model predicts the "
                "BOLD of the language network, not of the whole brain. Likely causes: "
                + CAUSES]
    inside = network_mask(space.coordinates())
    if inside.sum() < MIN_VOXELS or (~inside).sum() < MIN_VOXELS or k < MIN_VOXELS:
        return []
    f_in, f_out = aligned[inside].mean(), aligned[~inside].mean()
    if f_out > f_in:
        return [f"{code}: WARNING the intact model aligns in {100 * f_out:.0f} % of the "
                f"voxels outside the language network but {100 * f_in:.0f} % inside it "
                "(temporal, inferior frontal and temporo-parietal cortex): the map is "
                "unlikely to show language. Likely causes: " + CAUSES]
    return []
