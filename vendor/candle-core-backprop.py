"""Apply Tulip-rs's one change to candle-core: `python3 vendor/candle-core-backprop.py
vendor/candle-core/src/backprop.rs` (see vendor/README.md).

Upstream's backward pass accumulates every gradient contribution as

    let sum_grad = grads.or_insert(arg)?;   // a fresh zeros_like(arg) if arg has none yet
    *sum_grad = sum_grad.add(&arg_grad)?;

so each first contribution costs a memset and a full add, and under
CANDLE_GRAD_DO_NOT_DETACH the add is a graph node that keeps the zeros alive until the step
ends. This rewrites each such pair into `grads.accumulate(arg, &arg_grad)?`, which stores
the contribution itself when `arg` has no gradient yet and adds otherwise. Sites that
subtract, scatter, or use the sum for anything but a shape are left as they are.
"""
import re
import sys

ACCUMULATE = '''    /// Adds `grad` to the gradient of `tensor`; the first contribution is stored as is.
    ///
    /// Tulip-rs patch: upstream adds every contribution to a fresh `zeros_like(tensor)`.
    /// The stored gradient is the same as upstream's: contiguous, of the argument's shape,
    /// dtype and device (a mismatch goes through the add, so it reports upstream's error).
    fn accumulate(&mut self, tensor: &Tensor, grad: &Tensor) -> Result<()> {
        match self.0.entry(tensor.id()) {
            Entry::Occupied(mut entry) => {
                let sum = entry.get().add(grad)?;
                entry.insert(sum);
            }
            Entry::Vacant(entry) => {
                let mismatch = grad.shape() != tensor.shape()
                    || grad.dtype() != tensor.dtype()
                    || !grad.device().same_device(tensor.device());
                let grad = if mismatch {
                    tensor.zeros_like()?.add(grad)?
                } else if grad.is_contiguous() {
                    grad.clone()
                } else {
                    grad.contiguous()?
                };
                entry.insert(grad);
            }
        }
        Ok(())
    }

'''
ANCHOR = "    /// Extend this gradient store with the contents of another."
OR_INSERT = re.compile(r"^\s*let (\w+) = grads\.or_insert\(([^()]*)\)\?;\n", re.M)


def rewrite(src):
    out, pos, sites = [], 0, 0
    for m in OR_INSERT.finditer(src):
        if m.start() < pos:
            continue
        name, arg = m.group(1), m.group(2)
        assign = f"*{name} = {name}.add("
        at = src.find(assign, m.end())
        between = src[m.end():at]
        if at < 0 or re.search(rf"\b{name}\b", between) or "or_insert" in between:
            continue
        end, depth = at + len(assign), 1  # find the add's closing parenthesis
        while depth:
            depth += {"(": 1, ")": -1}.get(src[end], 0)
            end += 1
        # The sum has the argument's shape, so a shape query can ask the argument.
        grad = src[at + len(assign):end - 1].replace(f"{name}.dims()", f"{arg}.dims()")
        if re.search(rf"\b{name}\b", grad):
            continue
        out += [src[pos:m.start()], between, f"grads.accumulate({arg}, {grad.strip()})"]
        pos, sites = end, sites + 1
    out.append(src[pos:])
    return "".join(out), sites


def main(path):
    src = open(path).read()
    if "fn accumulate(" in src:
        sys.exit(f"{path} is already patched")
    if ANCHOR not in src:
        sys.exit(f"{path}: GradStore's `extend` doc comment not found; patch by hand")
    src, sites = rewrite(src)
    open(path, "w").write(src.replace(ANCHOR, ACCUMULATE + ANCHOR, 1))
    print(f"{path}: {sites} accumulation sites rewritten", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
