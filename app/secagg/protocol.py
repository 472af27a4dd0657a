"""Wire names shared by the server and hospital sides of secure aggregation.

One round of SecAgg+ on the Message API (Bonawitz et al., CCS 2017; Bell et al.,
CCS 2020 for the sparse "+" graph), stages as in Flower's legacy workflow:

0. ``query.secagg_setup``      server -> hospitals: parameters; reply: two public keys.
1. ``query.secagg_share_keys`` server -> hospitals: the neighbours' public keys;
   reply: Shamir shares of the self-mask seed and of the masking secret key,
   encrypted for each neighbour (the server only relays ciphertexts).
2. ``train``                   the usual train message plus the relayed ciphertexts;
   the hospital trains, then replies with its masked, quantised update only.
3. ``query.secagg_unmask``     server -> surviving hospitals: who survived and who
   dropped; reply: self-mask shares of survivors, key shares of dropped hospitals.
"""

from __future__ import annotations

# Message types (ClientApp routes ``query.<action>`` to ``@app.query(action)``).
SETUP = "query.secagg_setup"
SHARE_KEYS = "query.secagg_share_keys"
UNMASK = "query.secagg_unmask"

# Stage names kept in the hospital's state to enforce the order of stages.
STAGE_SETUP = "setup"
STAGE_SHARE_KEYS = "share-keys"
STAGE_MASK = "mask"
STAGE_UNMASK = "unmask"
STAGE_ORDER = (STAGE_SETUP, STAGE_SHARE_KEYS, STAGE_MASK, STAGE_UNMASK)

# RecordDict keys.
RECORD = "secagg"  # ConfigRecord: stage parameters (down) and results (up)
MASKED_RECORD = "secagg-masked"  # ArrayRecord of the one masked uint64 vector (up)
MASKED_KEY = "vector"
STATE_RECORD = "secagg-state"  # ConfigRecord in context.state, never sent

# Keys inside the ``secagg`` ConfigRecord.
SESSION = "session"
ROUND = "server-round"
SAMPLE_SIZE = "sample-size"
NUM_SHARES = "num-shares"
THRESHOLD = "threshold"
CLIPPING_RANGE = "clipping-range"
QUANTIZATION_RANGE = "quantization-range"
MAX_WEIGHT = "max-weight"
WEIGHTING = "weighting"
L2_CLIP = "l2-clip"
PK1, PK2 = "pk1", "pk2"
NEIGHBOURS = "neighbours"
DESTINATIONS = "destinations"
SOURCES = "sources"
CIPHERTEXTS = "ciphertexts"
ACTIVE = "active"
DEAD = "dead"
NODE_IDS = "node-ids"
SHARES = "shares"

# Metric a hospital adds to its plain metrics: share of update coordinates clipped.
CLIPPED_METRIC = "secagg_clipped_fraction"

# ---------------------------------------------------------------- CKKS (TenSEAL)
# Key distribution, once per run for hospitals that lack the key:
#   query.ckks_hello   -> each new hospital's ephemeral EC public key
#   query.ckks_deal    -> a key holder (or the first hospital, which creates the
#                         CKKS context) encrypts the secret context for each of them
#                         and returns a key-less context for the server
#   query.ckks_install -> each new hospital decrypts and keeps the secret context
# Every round: ``train`` with a ``ckks`` record -> CKKS ciphertexts of
# ``[w, w * update]``; ``query.ckks_decrypt`` -> one key holder decrypts the sum.
CKKS_HELLO = "query.ckks_hello"
CKKS_DEAL = "query.ckks_deal"
CKKS_INSTALL = "query.ckks_install"
CKKS_DECRYPT = "query.ckks_decrypt"
CKKS_RECORD = "ckks"  # ConfigRecord: parameters (down), ciphertexts (up)
CKKS_STATE = "ckks-state"  # ConfigRecord in context.state: the secret context
CKKS_PLAIN_SUM = "ckks-sum"  # ArrayRecord: the decrypted sum (up, from one holder)
RECIPIENTS = "recipients"
PUBLIC_KEYS = "public-keys"
DEALER_KEY = "dealer-key"
SERVER_CONTEXT = "server-context"
FINGERPRINT = "fingerprint"
CONTRIBUTORS = "contributors"
CIPHERTEXT = "ciphertext"
