from .backbone import ResNet, load_torchvision_weights
from .gate import GateMaskPool, gate_mask_pool, gate_mask_pool_reference
from .head import LengthHead, LinearHead, squash
from .loss import agreement_loss, class_loss, gate_agreement, margin_loss, saganet_loss
from .saganet import SagaNet, variant_config
