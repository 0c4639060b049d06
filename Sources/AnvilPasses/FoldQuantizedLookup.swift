import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps

/// An 8-bit tensor's elementwise float computation as one table lookup: DequantizeLinear(x)
/// → elementwise float ops (Sigmoid, Mul, HardSwish …, their other inputs scalar constants
/// or the same chain, Q/DQ pairs inside) → QuantizeLinear is a function of x's 256 codes
/// alone, so the chain becomes Anvil's QuantizedLookup(x, table) with the table computed by
/// the ops' own reference kernels: one pass over the bytes instead of one per op, and every
/// rounding the model asks for kept (QDQ YOLO's SiLU: DQ → Sigmoid → Q → DQ → Mul → Q).
extension FoldQuantizedLayers {
    static let elementwise: Set<String> = ["Sigmoid", "Tanh", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Clip", "Exp", "Neg", "Abs", "Erf",
                                           "Sqrt", "Softplus", "Elu", "Selu", "Mish", "Gelu", "Add", "Sub", "Mul", "Div", "Identity", "Floor", "Ceil", "Round"]

    static let lookup = RewriteRule("quantized elementwise chain as a lookup table", roots: ["QuantizeLinear"]) { q, ctx in
        guard !ctx.pass.standardOnly, let out = parameters(q, ctx, type: nil), q.inputs.count >= 2 else { return nil }
        // Where the chain goes on (only DequantizeLinears read q, and only elementwise ops read them),
        // the QuantizeLinear further on takes it all.
        let readers = ctx.uses.consumers[q.outputs[0]] ?? []
        if !readers.isEmpty, !ctx.uses.graphOutputs.contains(q.outputs[0]), readers.allSatisfy({ dq in
            dq.opType == "DequantizeLinear" && !(ctx.uses.consumers[dq.outputs[0]] ?? []).isEmpty
                && (ctx.uses.consumers[dq.outputs[0]] ?? []).allSatisfy { elementwise.contains($0.opType) && $0.domain.isEmpty } }) { return nil }
        var chain: [ObjectIdentifier: Node] = [:]
        var source: (name: String, type: DataType)?
        var leaves: [Node] = []
        func visit(_ value: String) -> Bool {
            if let c = ctx.constant(value) { return c.count == 1 && c.dataType.isFloatingPoint }
            guard let p = ctx.producer(value), p.domain.isEmpty, p.outputs.count == 1, chain.count < 16 else { return false }
            if chain[ObjectIdentifier(p)] != nil { return true }
            if p.opType == "DequantizeLinear" {
                guard let d = dequantized(value, ctx) else { return false }
                // A Q/DQ pair inside the chain: go on through the QuantizeLinear (undone where that fails).
                if let inner = ctx.producer(d.input), inner.opType == "QuantizeLinear", inner.domain.isEmpty, parameters(inner, ctx, type: nil) != nil,
                   source?.name != d.input {
                    let saved = (chain, source, leaves)
                    if visit(inner.inputs[0]) {
                        chain[ObjectIdentifier(p)] = p
                        chain[ObjectIdentifier(inner)] = inner
                        return true
                    }
                    (chain, source, leaves) = saved
                }
                guard source == nil || source!.name == d.input else { return false }
                source = (d.input, d.q.type)
                leaves.append(p)
                chain[ObjectIdentifier(p)] = p
                return true
            }
            guard elementwise.contains(p.opType) else { return false }
            chain[ObjectIdentifier(p)] = p
            return p.inputs.filter { !$0.isEmpty }.allSatisfy(visit)
        }
        // Something computes between the DequantizeLinear and q (a plain requantization has nothing to gain).
        guard visit(q.inputs[0]), let source, chain.values.contains(where: { $0.opType != "DequantizeLinear" && $0.opType != "QuantizeLinear" }) else { return nil }
        // Every value the chain makes is read only inside it (its first DequantizeLinears may have other readers: they stay).
        let members = Set(chain.keys).union([ObjectIdentifier(q)])
        var removable: [Node] = []
        for node in chain.values {
            let readers = ctx.uses.consumers[node.outputs[0]] ?? []
            let inside = readers.allSatisfy { members.contains(ObjectIdentifier($0)) } && !ctx.uses.graphOutputs.contains(node.outputs[0])
            if leaves.contains(where: { $0 === node }) {
                if inside { removable.append(node) }
            } else {
                guard inside else { return nil }
                removable.append(node)
            }
        }
        // The table: the chain evaluated by the reference kernels on all 256 codes, in graph order.
        // Codes in byte order: the table is indexed by the byte (an int8 −1 is entry 255).
        let codes = source.type == .uint8 ? Array(0...255) : Array(0...127) + Array(-128...(-1))
        var values: [String: Tensor] = [source.name: try Tensor(source.type, shape: [256], int64s: codes.map { Int64($0) })]
        let order = ctx.graph.nodes.filter { members.contains(ObjectIdentifier($0)) }
        for node in order {
            guard let definition = OpRegistry.lookup(domain: "", opType: node.opType, opset: ctx.pass.opset()) else { return nil }
            let inputs: [Tensor?] = node.inputs.map { $0.isEmpty ? nil : values[$0] ?? ctx.constant($0) }
            guard let result = try? definition.evaluate(EvalContext(node: node, opset: ctx.pass.opset(), inputs: inputs) { _, _ in [] }).first,
                  result.count == 256 else { return nil }
            values[node.outputs[0]] = result
        }
        guard let table = values[q.outputs[0]], table.dataType == out.type else { return nil }
        let name = ctx.graph.freshName("\(q.name)_table")
        ctx.pass.useAnvilDomain()
        let node = Node(name: q.name, opType: "QuantizedLookup", domain: anvilDomain, inputs: [source.name, name], outputs: q.outputs,
                        fusedFrom: order.flatMap(\.fusedFrom))
        return Patch(statistic: "DQ → elementwise ops → Q → QuantizedLookup", remove: removable + [q], add: [node], initializers: [(name, table)])
    }
}

extension FoldQuantizedLayers {
    /// A lookup that only clamps the codes of a quantized convolution's output, read only by
    /// it (PyTorch's and ONNX Runtime's symmetric exports quantize ReLU6 as its own
    /// DQ → Clip → Q): the convolution with that Clip as its activation. Exact: clipping in
    /// units of the output scale to whole codes and then rounding equals rounding and then
    /// clamping the codes.
    static let clampIntoConvolution = RewriteRule("clamping lookup into the convolution", roots: ["QuantizedLookup"]) { lookup, ctx in
        guard lookup.domain == anvilDomain, lookup.inputs.count == 2, let table = ctx.constant(lookup.inputs[1]), table.count == 256,
              let conv = ctx.producer(lookup.inputs[0]), conv.opType == "QLinearConv" || (conv.opType == "FusedQLinearConv" && conv.domain == anvilDomain),
              conv.attributes["activation"] == nil, ctx.uses.soleConsumer(conv.outputs[0]) === lookup, conv.inputs.count >= 8,
              let ys = ctx.constant(conv.inputs[6]), ys.count == 1, ys.dataType == .float, let scale = ys.doubles.first else { return nil }
        let zero = conv.inputs[7].isEmpty ? nil : ctx.constant(conv.inputs[7])
        let type = zero?.dataType ?? .uint8, zp = zero?.int64s.first ?? 0
        guard table.dataType == type, zero == nil || zero!.count == 1 else { return nil }
        // The codes in byte order, as the table is indexed; the table must be clamp(code, lo, hi).
        let codes: [Int64] = type == .uint8 ? (0...255).map { Int64($0) } : (0...127).map { Int64($0) } + (-128...(-1)).map { Int64($0) }
        let values = table.int64s
        guard let lo = values.min(), let hi = values.max(), zip(codes, values).allSatisfy({ min(max($0, lo), hi) == $1 }) else { return nil }
        ctx.pass.useAnvilDomain()
        var attributes = conv.attributes
        attributes["activation"] = .string("Clip")
        attributes["activation_alpha"] = .float(Float(Double(lo - zp) * scale))
        attributes["activation_beta"] = .float(Float(Double(hi - zp) * scale))
        let node = Node(name: conv.name, opType: "FusedQLinearConv", domain: anvilDomain, inputs: conv.inputs, outputs: lookup.outputs,
                        attributes: attributes, fusedFrom: conv.fusedFrom + lookup.fusedFrom)
        return Patch(statistic: "QLinearConv + clamping lookup → FusedQLinearConv", remove: [conv, lookup], add: [node])
    }
}
