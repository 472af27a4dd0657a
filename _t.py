import torch, time, json
torch.set_num_threads(1)
from app.client_app import app as client_app
from app.server_app import main
from app.config import RunConfig
from scripts.inprocess_grid import InProcessGrid
from flwr.app import Context, RecordDict
rc = RunConfig().replace(task="vertical", dataset="wdbc", num_server_rounds=3, output_dir="/tmp/vout", learning_rate=0.01, optimizer="adam").to_run_config()
grid = InProcessGrid(client_app, {i+1: {"partition-id": i, "num-partitions": 3} for i in range(3)}, rc)
t=time.time()
main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
print(time.time()-t, len(grid.log))
print(json.load(open('/tmp/vout/latest/history.json'))['vertical'])
