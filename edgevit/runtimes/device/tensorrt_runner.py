"""Runs a serialized TensorRT engine on the device's GPU (copied there beside device_bench.py)."""
import numpy as np


class Runner:
    """A serialized engine, buffers through cuda-python (no torch needed on a Jetson)."""

    def __init__(self, path, job):
        import tensorrt as trt
        from cuda import cudart

        self.trt, self.cudart = trt, cudart
        with open(path, "rb") as f:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(f.read())
        self.ctx = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inp = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out = next(n for n in names if n != self.inp)
        self.stream = cudart.cudaStreamCreate()[1]
        self.bufs, self.shape = {}, None
        self.version = "tensorrt " + trt.__version__

    def _bind(self, shape):
        if shape == self.shape:
            return
        for ptr in self.bufs.values():
            self.cudart.cudaFree(ptr)
        self.ctx.set_input_shape(self.inp, shape)
        self.out_shape = tuple(self.ctx.get_tensor_shape(self.out))
        self.bufs = {n: self.cudart.cudaMalloc(int(np.prod(s)) * 4)[1]
                     for n, s in ((self.inp, shape), (self.out, self.out_shape))}
        for n, ptr in self.bufs.items():
            self.ctx.set_tensor_address(n, ptr)
        self.shape = shape

    def __call__(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        self._bind(tuple(x.shape))
        h2d, d2h = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self.cudart.cudaMemcpyAsync(self.bufs[self.inp], x.ctypes.data, x.nbytes, h2d, self.stream)
        self.ctx.execute_async_v3(self.stream)
        y = np.empty(self.out_shape, dtype=np.float32)
        self.cudart.cudaMemcpyAsync(y.ctypes.data, self.bufs[self.out], y.nbytes, d2h, self.stream)
        self.cudart.cudaStreamSynchronize(self.stream)
        return y
