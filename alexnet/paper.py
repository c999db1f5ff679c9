"""Every constant of the paper, in one place, with the section it comes from.

Krizhevsky, Sutskever & Hinton (2012), "ImageNet Classification with Deep Convolutional
Neural Networks". Modules import these names; no other file repeats the numbers.
"""

# Section 2 (The dataset): shorter side rescaled to 256, central 256x256 patch kept.
IMAGE_SIZE = 256
# Section 2: 1000 ILSVRC classes; 50,000 validation and 150,000 test images (one line each
# in the devkit's ground truth).
NUM_CLASSES = 1000
ILSVRC_VAL_IMAGES = 50_000
ILSVRC_TEST_IMAGES = 150_000

# Section 4.1 (Data augmentation): random 224x224 patches and their reflections; at test
# time the four corners, the centre and their reflections (10 patches).
CROP_SIZE = 224
TEST_CROPS = 10
# Section 4.1: PCA colour shift, alpha_i ~ N(0, 0.1), drawn once per image per use.
PCA_ALPHA_STD = 0.1

# Section 3.5 (Overall architecture) / figure 2: the layer table. (kernels, kernel size,
# stride, padding).
# Padding of conv1 is our documented choice (see alexnet/model.py): 224 crops padded by 3
# on the right and bottom only, as cuda-convnet does, giving the 55x55 map.
CONV1 = (96, 11, 4, 0)
CONV2 = (256, 5, 1, 2)
CONV3 = (384, 3, 1, 1)
CONV4 = (384, 3, 1, 1)
CONV5 = (256, 3, 1, 1)
FC_WIDTH = 4096  # fc6 and fc7
# Section 3.2: the net is split into two columns ("GPUs"), each with half the kernels.
COLUMNS = 2

# Section 3.3 (Local response normalisation): k=2, n=5, alpha=1e-4, beta=0.75, alpha NOT
# divided by n in the paper's formula.
LRN_K = 2.0
LRN_N = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75

# Section 3.4 (Overlapping pooling): z=3, s=2; the comparison it beats is z=2, s=2.
POOL_SIZE = 3
POOL_STRIDE = 2
NON_OVERLAP_POOL_SIZE = 2
NON_OVERLAP_POOL_STRIDE = 2

# Section 4.2 (Dropout): p=0.5 on the outputs of fc6 and fc7.
DROPOUT_P = 0.5

# Section 5 (Details of learning).
BATCH_SIZE = 128
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
INIT_STD = 0.01  # every layer's weights ~ N(0, 0.01)
BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")  # all other biases 0
INIT_BIAS_ONE = 1.0  # the bias of those layers ("with the constant 1")
BASE_LR = 0.01
LR_DROP_FACTOR = 10.0  # divided by 10 when validation error stops improving
MAX_LR_DROPS = 3  # "reduced three times prior to termination"
EPOCHS = 90  # "roughly 90 cycles through the training set"

# Section 3.1 / figure 1: ReLU vs tanh on CIFAR-10, 25% training error threshold.
RELU_TANH_THRESHOLD = 0.25
RELU_TANH_SPEEDUP = 6.0

# Section 3 (figure 2 caption / section 3.5): neurons per layer as printed in the paper.
# The first figure is inconsistent with 55x55x96 = 290,400 (a known slip).
PAPER_NEURONS = (253_440, 186_624, 64_896, 64_896, 43_264, 4096, 4096, 1000)
# The two-column net's learned parameters ("60 million"), counted exactly.
PARAMETERS = 60_965_224

# Section 6 (Results): the top-5 error counts an image as wrong when its correct label is not
# among the five labels the model considers most probable.
TOP5 = 5
# Section 6.1 / figure 4 (right): the six training images nearest in fc7 space.
FIG4_NEIGHBOURS = 6
# Figure 4: eight test images with their top-5 labels (left), five query images (right).
FIG4_TOP5_IMAGES = 8
FIG4_QUERY_IMAGES = 5

# Section 6 (Results): (top-1 error, top-5 error) in percent.
RESULTS = {
    "ilsvrc2010-test": {
        "1 CNN, 10-crop": (37.5, 17.0),
        "1 CNN, centre crop": (39.0, 18.3),
        "SIFT + Fisher vectors": (45.7, 25.7),
    },
    "ilsvrc2012-val": {
        "1 CNN": (40.7, 18.2),
        "5 CNNs": (38.1, 16.4),
        "1 CNN, 6th conv layer, pre-trained": (39.0, 16.6),
        "7 CNNs": (36.7, 15.4),
    },
}

# Not the paper's: single-crop reproductions on ILSVRC-2012 val, (top-1, top-5) in percent,
# against which a centre-crop run compares (the paper's 2012 row is most likely 10-crop).
CENTRE_CROP_REPRODUCTIONS = {
    "Caffe bvlc_alexnet": (42.9, 19.8),
    "torchvision alexnet": (43.5, 20.9),
}

# Section 3 and 4: reported effect of each choice (top-1, top-5 percentage points gained).
ABLATION_DELTAS = {
    "lrn": (1.4, 1.2),  # section 3.3
    "overlapping_pool": (0.4, 0.3),  # section 3.4
    "two_columns": (1.7, 1.2),  # section 3.2
    "pca_colour": (1.0, None),  # section 4.1: "over 1%" top-1
}
