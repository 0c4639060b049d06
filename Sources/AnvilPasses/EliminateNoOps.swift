import AnvilCore
import AnvilKernels
import AnvilIR
import AnvilOps

/// Removes nodes that compute their input unchanged: Identity, inference-mode
/// Dropout, Cast to the same type, shape ops to the same shape, identity and
/// cancelling Transposes (and those moving only size-1 axes become Reshapes), zero Pad, full Slice, no-op Expand / Tile / Resize,
/// single-input Concat / Sum / Max / Min / Mean, single-output Split, and
/// x + 0, x - 0, x · 1, x / 1, x ^ 1.
public struct EliminateNoOps: Pass {
    public let name = "eliminate-no-ops"
    public let summary = "remove nodes that return their input unchanged"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver(Self.rules).run(context) }

    static let rules: [RewriteRule] = [
    RewriteRule("identity", roots: ["Identity", "Concat", "Sum", "Max", "Min", "Mean"]) { node, ctx in
        guard node.domain.isEmpty, node.inputs.count == 1, node.outputs.count == 1 else { return nil }
        return ctx.bypass(node, output: node.outputs[0], input: node.inputs[0], statistic: "\(node.opType) removed")
    },
    RewriteRule("inference dropout", roots: ["Dropout"]) { node, ctx in
        let maskUnused = node.outputs.count < 2 || node.outputs[1].isEmpty || ctx.uses.useCount(node.outputs[1]) == 0
        let training = node.inputs.count > 2 && !node.inputs[2].isEmpty ? ctx.constant(node.inputs[2])?.bools.first : false
        guard maskUnused, training == false else { return nil }
        return ctx.bypass(node, output: node.outputs[0], input: node.inputs[0], statistic: "Dropout removed")
    },
    RewriteRule("same-type cast", roots: ["Cast", "CastLike"]) { node, ctx in
        let from = ctx.type(node.inputs[0]).elementType
        guard let from, from == ctx.type(node.outputs[0]).elementType else { return nil }
        return ctx.bypass(node, output: node.outputs[0], input: node.inputs[0], statistic: "Cast removed")
    },
    RewriteRule("same-shape reshape", roots: ["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Tile", "Resize", "Upsample", "Slice", "Pad"]) { node, ctx in
        guard node.domain.isEmpty, let input = node.inputs.first, sameType(ctx.type(input), ctx.type(node.outputs[0])) else { return nil }
        switch node.opType {
        case "Slice":
            // A same-shape slice with a negative step reverses; only unit steps are no-ops.
            if node.inputs.count > 4, !node.inputs[4].isEmpty {
                guard let steps = ctx.constant(node.inputs[4]), steps.int64s.allSatisfy({ $0 == 1 }) else { return nil }
            }
        case "Pad":
            // Negative pads crop: pads must all be zero.
            let pads = ctx.pass.opset() < 11 ? (try? AttributeReader(node: node).ints("pads")).flatMap { $0 } : ctx.constant(node.inputs.count > 1 ? node.inputs[1] : "").map { $0.int64s.map { Int($0) } }
            guard let pads, pads.allSatisfy({ $0 == 0 }) else { return nil }
        case "Resize":
            guard (try? AttributeReader(node: node).string("coordinate_transformation_mode", "half_pixel")) != "tf_crop_and_resize" else { return nil }
        default: break
        }
        return ctx.bypass(node, output: node.outputs[0], input: input, statistic: "\(node.opType) removed")
    },
    RewriteRule("identity transpose", roots: ["Transpose"]) { node, ctx in
        guard let perm = transposePerm(node, ctx) else { return nil }
        if perm == Array(perm.indices) {
            return ctx.bypass(node, output: node.outputs[0], input: node.inputs[0], statistic: "Transpose removed")
        }
        // Transpose of a Transpose read only here: compose the two permutations.
        guard let inner = ctx.producer(node.inputs[0]), inner.opType == "Transpose", inner.domain.isEmpty,
              ctx.uses.soleConsumer(inner.outputs[0]) === node, let first = transposePerm(inner, ctx), first.count == perm.count else { return nil }
        let composed = perm.map { first[$0] }
        if composed == Array(composed.indices) {
            guard var patch = ctx.bypass(node, output: node.outputs[0], input: inner.inputs[0], statistic: "Transpose pair cancelled") else { return nil }
            patch.remove.append(inner)
            return patch
        }
        let merged = Node(name: node.name, opType: "Transpose", inputs: [inner.inputs[0]], outputs: node.outputs,
                          attributes: ["perm": .ints(composed.map { Int64($0) })], fusedFrom: inner.fusedFrom + node.fusedFrom)
        return Patch(statistic: "Transpose pair merged", remove: [inner, node], add: [merged])
    },
    // A Transpose that only moves axes of size 1 keeps the elements in order: a Reshape,
    // which runs as a view instead of a copy (torch's MultiheadAttention swaps the
    // batch and sequence axes of a batch of one).
    RewriteRule("transpose of unit axes", roots: ["Transpose"]) { node, ctx in
        // Reshape takes its shape as an input from opset 5; a 0 in it would copy a dim (no allowzero).
        guard node.domain.isEmpty, ctx.pass.opset() >= 5, let perm = transposePerm(node, ctx), let dims = ctx.type(node.inputs[0]).dims,
              dims.count == perm.count, perm != Array(perm.indices), let out = ctx.type(node.outputs[0]).dims, out.count == dims.count,
              out.filter({ $0.value == nil }).count <= 1, !out.contains(.known(0)) else { return nil }
        let moved = perm.filter { dims[$0] != .known(1) }
        guard moved == moved.sorted() else { return nil }
        let target = ctx.graph.freshName("\(node.name)_shape")
        let shape = try Tensor(int64s: out.map { $0.value.map(Int64.init) ?? -1 }, shape: [out.count])
        let reshape = Node(name: node.name, opType: "Reshape", inputs: [node.inputs[0], target], outputs: node.outputs, fusedFrom: node.fusedFrom)
        return Patch(statistic: "Transpose of size-1 axes made a Reshape", remove: [node], add: [reshape], initializers: [(target, shape)])
    },
    RewriteRule("single-output split", roots: ["Split"]) { node, ctx in
        guard node.outputs.count == 1, sameType(ctx.type(node.inputs[0]), ctx.type(node.outputs[0])) else { return nil }
        return ctx.bypass(node, output: node.outputs[0], input: node.inputs[0], statistic: "Split removed")
    },
    RewriteRule("neutral element", roots: ["Add", "Sub", "Mul", "Div", "Pow"]) { node, ctx in
        guard node.domain.isEmpty, node.inputs.count == 2 else { return nil }
        let neutral: Double = node.opType == "Add" || node.opType == "Sub" ? 0 : 1
        let commutative = node.opType == "Add" || node.opType == "Mul"
        for (constantSide, valueSide) in commutative ? [(1, 0), (0, 1)] : [(1, 0)] {
            guard let c = ctx.constant(node.inputs[constantSide]), c.dataType != .string, c.doubles.allSatisfy({ $0 == neutral }),
                  sameType(ctx.type(node.inputs[valueSide]), ctx.type(node.outputs[0])) else { continue }
            return ctx.bypass(node, output: node.outputs[0], input: node.inputs[valueSide], statistic: "\(node.opType) by \(Int(neutral)) removed")
        }
        return nil
    },
    ]
}

/// Both types fully known (or symbolically equal) and identical.
func sameType(_ a: TensorType, _ b: TensorType) -> Bool {
    guard let ea = a.elementType, ea == b.elementType, let da = a.dims, let db = b.dims, da == db else { return false }
    return !da.contains(.unknown)
}

/// The permutation of a Transpose, resolving the default (reversal) from the input rank.
func transposePerm(_ node: Node, _ ctx: RewriteContext) -> [Int]? {
    if let perm = try? AttributeReader(node: node).ints("perm") { return perm }
    guard let rank = ctx.type(node.inputs[0]).rank else { return nil }
    return Array((0..<rank).reversed())
}
