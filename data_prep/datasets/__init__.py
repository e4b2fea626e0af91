"""One TFDS builder per dataset; `BUILDERS` maps CLI names to them."""

from data_prep.datasets.custom import CustomVideos
from data_prep.datasets.diving48 import Diving48
from data_prep.datasets.finegym import FineGym
from data_prep.datasets.kinetics import Kinetics400
from data_prep.datasets.ntu import Ntu60
from data_prep.datasets.paab import NUCLA, ToyotaSmarthome
from data_prep.datasets.synthetic import SyntheticPoseActions

BUILDERS = {
    "diving48": Diving48,
    "finegym": FineGym,
    "kinetics400": Kinetics400,
    "ntu60": Ntu60,
    "smarthome": ToyotaSmarthome,
    "nucla": NUCLA,
    "custom": CustomVideos,
    "synthetic": SyntheticPoseActions,
}
