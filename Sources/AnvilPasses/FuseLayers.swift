import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps

/// Layers that take fused bias, residual and activation, and their fused form.
let fusable: [String: String] = ["Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"]

/// The fused op a node is or becomes, with its inputs padded to (X, W, B, Sum).
func asFused(_ node: Node) -> (op: String, inputs: [String])? {
    if node.domain == anvilDomain, fusable.values.contains(node.opType) {
        return (node.opType, node.inputs + Array(repeating: "", count: max(0, 4 - node.inputs.count)))
    }
    guard node.domain.isEmpty, let op = fusable[node.opType] else { return nil }
    return (op, node.inputs + Array(repeating: "", count: max(0, 4 - node.inputs.count)))
}

/// A fused node replacing `layer` (taking `root`'s outputs), trailing empty inputs trimmed.
func fusedNode(_ layer: Node, op: String, inputs: [String], root: Node, extra: [String: Attribute] = [:]) -> Node {
    var trimmed = inputs
    while trimmed.last == "" { trimmed.removeLast() }
    var attributes = layer.attributes
    for (k, v) in extra { attributes[k] = v }
    return Node(name: layer.name, opType: op, domain: anvilDomain, inputs: trimmed, outputs: root.outputs, attributes: attributes,
                fusedFrom: layer.fusedFrom + root.fusedFrom)
}

/// The producer of `value` if it is a fusable layer read only by `root`. Its weights
/// must be constant: the fused kernels are convolutions and matrix products with
/// prepacked weights (a product of two runtime tensors, as attention scores are, runs
/// on the batched matmul, which takes no fused residual or activation).
func fusableProducer(_ value: String, of root: Node, _ ctx: RewriteContext) -> Node? {
    guard let p = ctx.producer(value), asFused(p) != nil, ctx.uses.soleConsumer(value) === root,
          p.inputs.count > 1, ctx.constant(p.inputs[1]) != nil else { return nil }
    return p
}

/// MatMul + Add of a constant bias along the last axis → Gemm (2-D input) or FusedMatMul.
public struct FuseMatMulBias: Pass {
    public let name = "fuse-matmul-bias"
    public let summary = "MatMul followed by a constant bias Add becomes Gemm (2-D) or one MatMul-with-bias; a Gemm between a flattening and an unflattening Reshape becomes a MatMul on the unflattened input"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver([Self.flattenedGemm, Self.rule]).run(context) }

    /// Reshape(x: [d…, e…] → [·, K]) → Gemm(W, C) → Reshape(→ [d…, N]) with e… making K, as
    /// PyTorch's linear layers on 3-D input often export (addmm on a view): MatMul(x′, W) + C
    /// on x′ = x with e… merged (x itself when e… is K alone), so that the bias, a following
    /// activation and a residual Add fuse into the product, and a head merge before it is seen.
    static let flattenedGemm = RewriteRule("flattened gemm", roots: ["Reshape"]) { node, ctx in
        guard node.domain.isEmpty, let gemm = ctx.interior(node.inputs[0], "Gemm", readBy: node), gemm.inputs.count >= 2,
              let flatten = ctx.producer(gemm.inputs[0]), flatten.opType == "Reshape", flatten.domain.isEmpty,
              let x = ctx.type(flatten.inputs[0]).dims, let flat = ctx.type(flatten.outputs[0]).dims, flat.count == 2, let k = flat[1].value,
              let out = ctx.type(node.outputs[0]).dims, out.count >= 3, x.count >= out.count, let n = out.last?.value,
              zip(out.dropLast(), x).allSatisfy({ RecognizeAttention.sameDimension($0, $1) }),
              x[(out.count - 1)...].reduce(Optional(1), { p, d in p.flatMap { p in d.value.map { p * $0 } } }) == k,
              let w = ctx.constant(gemm.inputs[1]), w.dataType == .float, w.rank == 2
        else { return nil }
        let a = AttributeReader(node: gemm)
        guard ctx.pass.opset() >= 5, (try? a.int("transA", 0)) == 0, (try? a.float("alpha", 1)) == 1, let transB = try? a.int("transB", 0) != 0,
              w.shape == (transB ? [n, k] : [k, n]) else { return nil }
        var bias: Tensor?
        if gemm.inputs.count > 2, !gemm.inputs[2].isEmpty {
            guard (try? a.float("beta", 1)) == 1, let c = ctx.constant(gemm.inputs[2]), c.dataType == .float, c.count == n,
                  c.shape.dropLast().allSatisfy({ $0 == 1 }) else { return nil }
            bias = try c.reshaped([n])
        }
        var initializers: [(String, Tensor)] = []
        var weights = gemm.inputs[1]
        if transB {
            let source = w.floats
            var transposed = [Float](repeating: 0, count: source.count)
            for row in 0..<n { for col in 0..<k { transposed[col * n + row] = source[row * k + col] } }
            weights = ctx.graph.freshName("\(gemm.name)_weights")
            initializers.append((weights, try Tensor(floats: transposed, shape: [k, n])))
        }
        // The flattening Reshape stays while something else reads it.
        let flattenRemoved = ctx.uses.soleConsumer(flatten.outputs[0]) === gemm
        var nodes: [Node] = []
        // x's trailing dims that make K (a head merge's [H, D]) merge into one, leading dims copied.
        var input = flatten.inputs[0]
        if x.count > out.count {
            let shape = ctx.graph.freshName("\(flatten.name)_shape"), merged = ctx.graph.freshName("\(flatten.name)_merged")
            initializers.append((shape, try Tensor(int64s: Array(repeating: 0, count: out.count - 1) + [Int64(k)], shape: [out.count])))
            nodes.append(Node(name: flattenRemoved ? flatten.name : "\(flatten.name)_merge", opType: "Reshape", inputs: [input, shape],
                              outputs: [merged], fusedFrom: flattenRemoved ? flatten.fusedFrom : nil))
            input = merged
        }
        let product = bias == nil ? node.outputs[0] : ctx.graph.freshName("\(gemm.name)_product")
        nodes.append(Node(name: gemm.name, opType: "MatMul", inputs: [input, weights], outputs: [product],
                          fusedFrom: (flattenRemoved && x.count == out.count ? flatten.fusedFrom : []) + gemm.fusedFrom))
        if let bias {
            let biasName = ctx.graph.freshName("\(gemm.name)_bias")
            initializers.append((biasName, bias))
            nodes.append(Node(name: "\(gemm.name)_add_bias", opType: "Add", inputs: [product, biasName], outputs: node.outputs, fusedFrom: node.fusedFrom))
        }
        let remove = flattenRemoved ? [flatten, gemm, node] : [gemm, node]
        return Patch(statistic: "Reshape + Gemm + Reshape → MatMul", remove: remove, add: nodes, initializers: initializers)
    }

    static let rule = RewriteRule("matmul + bias", roots: ["Add"]) { node, ctx in
        guard node.domain.isEmpty, node.inputs.count == 2 else { return nil }
        for side in [0, 1] {
            guard let mm = ctx.producer(node.inputs[side]), mm.opType == "MatMul", mm.domain.isEmpty,
                  ctx.uses.soleConsumer(mm.outputs[0]) === node,
                  let w = ctx.constant(mm.inputs[1]), w.rank == 2, let bias = ctx.constant(node.inputs[1 - side]),
                  bias.dataType == w.dataType, bias.count == w.shape[1], bias.shape.dropLast().allSatisfy({ $0 == 1 }),
                  sameType(ctx.type(mm.outputs[0]), ctx.type(node.outputs[0])), let aRank = ctx.type(mm.inputs[0]).rank else { continue }
            let biasName = ctx.graph.freshName("\(node.name)_bias")
            let flat = try bias.reshaped([bias.count])
            if aRank == 2 {
                let gemm = Node(name: mm.name, opType: "Gemm", inputs: [mm.inputs[0], mm.inputs[1], biasName], outputs: node.outputs,
                                fusedFrom: mm.fusedFrom + node.fusedFrom)
                return Patch(statistic: "MatMul + Add → Gemm", remove: [mm, node], add: [gemm], initializers: [(biasName, flat)])
            }
            guard !ctx.pass.standardOnly else { return nil }
            ctx.pass.useAnvilDomain()
            let fused = fusedNode(mm, op: "FusedMatMul", inputs: [mm.inputs[0], mm.inputs[1], biasName], root: node)
            return Patch(statistic: "MatMul + Add → FusedMatMul", remove: [mm, node], add: [fused], initializers: [(biasName, flat)])
        }
        return nil
    }
}

/// Conv / Gemm / MatMul + Add of a same-shaped tensor (a residual connection) → one
/// fused layer whose output adds the residual, as oneDNN's sum post-op does.
public struct FuseResidualAdd: Pass {
    public let name = "fuse-residual-add"
    public let summary = "a layer followed by the Add of a same-shaped tensor becomes one layer with a residual input"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool {
        guard !context.standardOnly else { return false }
        return try RewriteDriver([Self.rule]).run(context)
    }

    /// The residual joins a layer without an activation (summed before the one fused later), or
    /// a convolution whose activation is already fused (summed after it: YOLO's x + SiLU(conv(x)),
    /// `residual_after_activation`, which `FuseActivation` applies once activations are fused).
    static let rule = RewriteRule("layer + residual", roots: ["Add", "Sum"]) { node, ctx in
        guard node.domain.isEmpty, node.inputs.count == 2, node.inputs[0] != node.inputs[1] else { return nil }
        for side in [0, 1] {
            guard let layer = fusableProducer(node.inputs[side], of: node, ctx), let (op, inputs) = asFused(layer),
                  inputs[3].isEmpty, ctx.constant(node.inputs[1 - side]) == nil,
                  sameType(ctx.type(node.inputs[1 - side]), ctx.type(node.outputs[0])),
                  sameType(ctx.type(layer.outputs[0]), ctx.type(node.outputs[0])) else { continue }
            let after = layer.attributes["activation"] != nil
            guard !after || op == "FusedConv" else { continue }
            ctx.pass.useAnvilDomain()
            var fusedInputs = inputs
            fusedInputs[3] = node.inputs[1 - side]
            return Patch(statistic: after ? "FusedConv + activation + residual Add fused" : "\(layer.opType) + residual Add fused", remove: [layer, node],
                         add: [fusedNode(layer, op: op, inputs: fusedInputs, root: node, extra: after ? ["residual_after_activation": .int(1)] : [:])])
        }
        return nil
    }
}

/// Conv / Gemm / MatMul (with fused bias and residual) + activation → one fused layer; then
/// a convolution with its activation fused + the Add of a same-shaped tensor (YOLO's
/// bottleneck, x + SiLU(conv(…))) → the convolution with that residual added after the
/// activation (`residual_after_activation`, oneDNN's sum post-op after the eltwise one).
public struct FuseActivation: Pass {
    public let name = "fuse-activation"
    public let summary = "a layer followed by an activation becomes one layer with the activation fused; a residual Add after a convolution's activation joins it"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool {
        guard !context.standardOnly else { return false }
        let activations = try RewriteDriver([Self.rule]).run(context)
        return try RewriteDriver([FuseResidualAdd.rule]).run(context) || activations
    }

    static let activations: Set<String> = ["Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Mish", "Gelu", "SiLU", "Swish"]

    static let rule = RewriteRule("layer + activation", roots: activations) { node, ctx in
        guard let layer = fusableProducer(node.inputs[0], of: node, ctx), let (op, inputs) = asFused(layer),
              layer.attributes["activation"] == nil, let activation = activation(of: node, ctx) else { return nil }
        ctx.pass.useAnvilDomain()
        let (name, alpha, beta) = activation.attributes
        var extra: [String: Attribute] = ["activation": .string(name)]
        if let alpha { extra["activation_alpha"] = .float(alpha) }
        if let beta { extra["activation_beta"] = .float(beta) }
        return Patch(statistic: "\(layer.opType) + \(node.opType) fused", remove: [layer, node],
                     add: [fusedNode(layer, op: op, inputs: inputs, root: node, extra: extra)])
    }

    /// The activation a node computes, nil when it is not one a layer can absorb.
    static func activation(of node: Node, _ ctx: RewriteContext) -> Activation? {
        let a = AttributeReader(node: node)
        let isAnvil = node.domain == anvilDomain
        guard node.domain.isEmpty || isAnvil, node.outputs.count == 1 else { return nil }
        switch node.opType {
        case "Relu": return .relu
        case "Sigmoid": return .sigmoid
        case "Tanh": return .tanh
        case "HardSwish": return .hardSwish
        case "Mish": return .mish
        case "SiLU", "Swish":
            guard node.opType == "Swish" || isAnvil, let alpha = try? a.float("alpha", 1) else { return nil }
            return alpha == 1 ? .silu : .swish(alpha: alpha)
        case "LeakyRelu": return .leakyRelu(alpha: (try? a.float("alpha", 0.01)) ?? 0.01)
        case "Elu": return .elu(alpha: (try? a.float("alpha", 1)) ?? 1)
        case "HardSigmoid": return .hardSigmoid(alpha: (try? a.float("alpha", 0.2)) ?? 0.2, beta: (try? a.float("beta", 0.5)) ?? 0.5)
        case "Gelu": return (try? a.string("approximate", "none")) == "tanh" ? .geluTanh : .gelu
        case "Clip":
            if ctx.pass.opset() < 11 {
                return .clip(min: (try? a.float("min", -.greatestFiniteMagnitude)) ?? -.greatestFiniteMagnitude,
                             max: (try? a.float("max", .greatestFiniteMagnitude)) ?? .greatestFiniteMagnitude)
            }
            func bound(_ i: Int, _ d: Float) -> Float? {
                guard i < node.inputs.count, !node.inputs[i].isEmpty else { return d }
                return ctx.constant(node.inputs[i]).map { Float($0.double(at: 0)) }
            }
            guard let lo = bound(1, -.greatestFiniteMagnitude), let hi = bound(2, .greatestFiniteMagnitude) else { return nil }
            return .clip(min: lo, max: hi)
        default: return nil
        }
    }
}
