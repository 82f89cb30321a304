"""A stand-in for GPUtil (not installed on the GPU test machine): getGPUs from nvidia-smi."""
import subprocess


class GPU:
    def __init__(self, idx, name, total):
        self.id, self.name, self.memoryTotal = idx, name, total


def getGPUs():
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True).stdout
    gpus = []
    for line in out.strip().splitlines():
        i, name, total = [x.strip() for x in line.split(",")]
        gpus.append(GPU(int(i), name, float(total)))
    return gpus
