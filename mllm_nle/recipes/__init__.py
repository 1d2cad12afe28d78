"The four methods' recipes. Importing the package imports each, which registers its methods (`train.get_method`)."
from . import dgpref, hacl, mcle, mcmdpo
