"""FedAvg (McMahan et al., 2017) and FedAvg on the weakest tier's model.

* **FedAvg** sends the full global model to every client every round and averages the uploads
  (weighted as ``RunConfig.weighting`` says);
* **FedAvg on the weakest model** does the same with the model pruned for the weakest tier present:
  the lowest common denominator every device can train.
"""

from __future__ import annotations

from torch import nn

from reft import bench
from reft.federation import Client, Federation
from reft.strategies.base import Strategy, average


class FedAvg(Strategy):
    """One global model on every client, broadcast every round, averaged weighted by data size."""

    name = "fedavg"
    weakest = False
    uses_public = False

    def setup(self, fed: Federation) -> None:
        model = fed.dense_model()
        if self.weakest:
            model = fed.prune(model, max(fed.ratios.values()))
        self.server_model = model

    def send(self, fed: Federation, rnd: int, client: Client) -> nn.Module:
        return self.server_model

    def aggregate(self, fed: Federation, rnd: int, uploads: dict[int, nn.Module]) -> dict[str, float]:
        ids = sorted(uploads)
        with bench.phase("server: averaging"):
            self.server_model.load_state_dict(average([uploads[i].state_dict() for i in ids], self.weights(fed, ids)))
        return {"server_flops": 0.0}  # averaging: a few FLOPs per parameter and upload, negligible


class FedAvgWeakest(FedAvg):
    """FedAvg on the model pruned for the weakest tier present: the lowest common denominator."""

    name = "fedavg-weakest"
    weakest = True
