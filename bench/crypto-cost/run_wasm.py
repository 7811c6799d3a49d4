# Runs a wasm32-wasip1 program in Wasmtime: run_wasm.py <file.wasm> <args...>. The
# module is compiled once into <file>.cwasm, so that a run under callgrind counts the
# program, not Cranelift (scripts/crypto-cost.sh).
import os, sys, wasmtime
config = wasmtime.Config()
config.parallel_compilation = False
engine = wasmtime.Engine(config)
path = sys.argv[1]
compiled = path + ".cwasm"


def compile_module():
    module = wasmtime.Module.from_file(engine, path)
    with open(compiled, "wb") as f:
        f.write(module.serialize())
    return module


# A module compiled outside valgrind may use CPU features valgrind does not show:
# then it is compiled again, for this CPU.
try:
    if os.path.getmtime(compiled) < os.path.getmtime(path):
        raise FileNotFoundError(compiled)
    module = wasmtime.Module.deserialize_file(engine, compiled)
except (FileNotFoundError, wasmtime.WasmtimeError):
    module = compile_module()
store = wasmtime.Store(engine)
linker = wasmtime.Linker(engine)
linker.define_wasi()
wasi = wasmtime.WasiConfig()
wasi.argv = ["p"] + sys.argv[2:]
wasi.inherit_stdout()
store.set_wasi(wasi)
inst = linker.instantiate(store, module)
try:
    inst.exports(store)["_start"](store)
except wasmtime.ExitTrap as exit:
    sys.exit(exit.code)
