"""edgecnn: a cloud-edge collaboration framework for cognitive services.

Implements Ding et al., "A Cloud-Edge Collaboration Framework for Cognitive
Service": a deep CloudCNN in the cloud shares its m lower layers with a
shallow EdgeCNN on each edge server (Alg. 1) and later labels what users
upload to the edge so that the edge can retrain (Alg. 2).
"""

__version__ = "0.1.0"
