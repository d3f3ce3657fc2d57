"""The vSphere lab: VMware's vcsim simulator plus Changed Block Tracking.

    from lab import Lab, LabSpec
    with Lab.start(LabSpec(vms_per_host=2)) as lab:
        si = lab.connect()

See lab/README.md for the flags, the control calls and how the lab differs from
a real vCenter.
"""

from lab.guest import FillMix, FillReport
from lab.process import Lab
from lab.spec import LabError, LabSpec

__all__ = ["FillMix", "FillReport", "Lab", "LabError", "LabSpec"]
