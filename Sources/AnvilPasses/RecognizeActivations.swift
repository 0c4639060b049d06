import AnvilCore
import AnvilKernels
import AnvilIR
import AnvilOps

/// Recognizes activations exporters write out as several nodes:
/// - GELU, erf form: x · 0.5 · (1 + erf(x / √2)), any order of the products;
/// - GELU, tanh form: 0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³)));
/// - HardSwish: x · relu6(x + 3) / 6 and x · HardSigmoid(x) with α = 1/6, β = 1/2;
/// - SiLU: x · sigmoid(x), and x · sigmoid(α · x) (Swish; CLIP's quick GELU has α = 1.702).
/// Each becomes the standard op where the model's opset has it (Gelu 20, HardSwish 14,
/// Swish 24), else Anvil's op of the same semantics.
public struct RecognizeActivations: Pass {
    public let name = "recognize-activations"
    public let summary = "recognize decomposed GELU, HardSwish and SiLU"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver(Self.rules).run(context) }

    static let rules: [RewriteRule] = [
        RewriteRule("gelu", roots: ["Mul", "Div"]) { node, ctx in
            let (factors, interior) = ctx.productFactors(node)
            guard factors.count == 3 else { return nil }
            // One factor 0.5, one Add(f(x), 1), the remaining one x.
            guard let half = factors.firstIndex(where: { ctx.factorValue($0).map { abs($0 - 0.5) < 1e-6 } ?? false }) else { return nil }
            for (addIndex, addValue) in factors.enumerated() where addIndex != half {
                let x = factors[3 - half - addIndex]
                guard let reader = readerOf(addValue, node: node, interior: interior), let add = ctx.interior(addValue, "Add", readBy: reader),
                      let inner = nonConstantAndOne(add, ctx) else { continue }
                if let erf = ctx.interior(inner, "Erf", readBy: add), let scaled = scaledInput(erf.inputs[0], by: 1 / 2.0.squareRoot(), reader: erf, ctx), scaled.x == x {
                    guard let gelu = recognized("Gelu", name: node.name, inputs: [x], outputs: node.outputs,
                                                from: interior + [add, erf] + scaled.nodes + [node], ctx) else { return nil }
                    return Patch(statistic: "GELU (erf) recognized", remove: interior + [add, erf] + scaled.nodes + [node], add: [gelu])
                }
                if let tanh = ctx.interior(inner, "Tanh", readBy: add), let match = tanhGeluInner(tanh, x: x, ctx) {
                    guard let gelu = recognized("Gelu", name: node.name, inputs: [x], outputs: node.outputs,
                                                attributes: ["approximate": .string("tanh")], from: interior + [add, tanh] + match + [node], ctx) else { return nil }
                    return Patch(statistic: "GELU (tanh) recognized", remove: interior + [add, tanh] + match + [node], add: [gelu])
                }
            }
            return nil
        },
        RewriteRule("hardswish", roots: ["Mul", "Div"]) { node, ctx in
            let (factors, interior) = ctx.productFactors(node)
            let sixth = factors.firstIndex { ctx.factorValue($0).map { abs($0 - 1.0 / 6) < 1e-6 } ?? false }
            for (i, value) in factors.enumerated() where i != sixth {
                let others = factors.enumerated().filter { $0.offset != i && $0.offset != sixth }.map(\.element)
                guard others.count == 1, let reader = readerOf(value, node: node, interior: interior) else { continue }
                let x = others[0]
                if let sixth, factors.count == 3, let clip = ctx.interior(value, "Clip", readBy: reader),
                   let bounds = clipBounds(clip, ctx), bounds == (0, 6), let add = ctx.interior(clip.inputs[0], "Add", readBy: clip),
                   add.inputs.contains(x), let three = add.inputs.first(where: { $0 != x }), ctx.isConstant(three, 3) {
                    guard let hs = recognized("HardSwish", name: node.name, inputs: [x], outputs: node.outputs,
                                              from: interior + [add, clip, node], ctx) else { return nil }
                    return Patch(statistic: "HardSwish recognized", remove: interior + [clip, add, node], add: [hs])
                }
                if sixth == nil, factors.count == 2, let hsig = ctx.interior(value, "HardSigmoid", readBy: reader), hsig.inputs[0] == x,
                   abs(Double((try? AttributeReader(node: hsig).float("alpha", 0.2)) ?? 0) - 1.0 / 6) < 1e-6,
                   (try? AttributeReader(node: hsig).float("beta", 0.5)) == 0.5 {
                    guard let hs = recognized("HardSwish", name: node.name, inputs: [x], outputs: node.outputs,
                                              from: interior + [hsig, node], ctx) else { return nil }
                    return Patch(statistic: "HardSwish recognized", remove: interior + [hsig, node], add: [hs])
                }
            }
            return nil
        },
        RewriteRule("silu", roots: ["Mul"]) { node, ctx in
            guard node.domain.isEmpty, node.inputs.count == 2 else { return nil }
            for side in [0, 1] {
                guard let sigmoid = ctx.interior(node.inputs[side], "Sigmoid", readBy: node) else { continue }
                let x = node.inputs[1 - side]
                // x · sigmoid(x), or x · sigmoid(α · x) (CLIP's quick GELU, α = 1.702).
                var alpha: Float = 1, matched = [sigmoid, node]
                if sigmoid.inputs[0] != x {
                    guard let scale = ctx.interior(sigmoid.inputs[0], "Mul", readBy: sigmoid), scale.inputs.count == 2, scale.inputs.contains(x),
                          let c = scale.inputs.first(where: { $0 != x }).flatMap({ ctx.scalar($0) }), c.isFinite, c != 0 else { continue }
                    alpha = Float(c)
                    matched.insert(scale, at: 0)
                }
                let fused = matched.flatMap(\.fusedFrom), attributes: [String: Attribute] = alpha == 1 ? [:] : ["alpha": .float(alpha)]
                if ctx.pass.opset() >= 24 {
                    return Patch(statistic: "SiLU recognized", remove: matched,
                                 add: [Node(name: node.name, opType: "Swish", inputs: [x], outputs: node.outputs, attributes: attributes, fusedFrom: fused)])
                }
                guard !ctx.pass.standardOnly else { return nil }
                ctx.pass.useAnvilDomain()
                return Patch(statistic: "SiLU recognized", remove: matched,
                             add: [Node(name: node.name, opType: "SiLU", domain: anvilDomain, inputs: [x], outputs: node.outputs, attributes: attributes, fusedFrom: fused)])
            }
            return nil
        },
    ]

    /// The node reading `value` inside a flattened product: the root or an interior Mul/Div.
    static func readerOf(_ value: String, node: Node, interior: [Node]) -> Node? {
        if node.inputs.contains(value) { return node }
        return interior.first { $0.inputs.contains(value) }
    }

    /// For Add(v, 1) in either order: v.
    static func nonConstantAndOne(_ add: Node, _ ctx: RewriteContext) -> String? {
        guard add.inputs.count == 2 else { return nil }
        if ctx.isConstant(add.inputs[1], 1, tolerance: 1e-6) { return add.inputs[0] }
        if ctx.isConstant(add.inputs[0], 1, tolerance: 1e-6) { return add.inputs[1] }
        return nil
    }

    /// `value` = x · factor (as Mul by factor or Div by 1/factor): x and the node.
    static func scaledInput(_ value: String, by factor: Double, reader: Node, _ ctx: RewriteContext) -> (x: String, nodes: [Node])? {
        if let d = ctx.interior(value, "Div", readBy: reader), let c = ctx.scalar(d.inputs[1]), abs(1 / c - factor) < 1e-4 * factor {
            return (d.inputs[0], [d])
        }
        if let m = ctx.interior(value, "Mul", readBy: reader) {
            for side in [0, 1] where ctx.scalar(m.inputs[side]).map({ abs($0 - factor) < 1e-4 * factor }) ?? false {
                return (m.inputs[1 - side], [m])
            }
        }
        return nil
    }

    /// Inside tanh: √(2/π) · (x + 0.044715 · x³); returns the interior nodes.
    static func tanhGeluInner(_ tanh: Node, x: String, _ ctx: RewriteContext) -> [Node]? {
        guard let (sum, scaleNodes) = scaledInput(tanh.inputs[0], by: (2 / Double.pi).squareRoot(), reader: tanh, ctx).map({ ($0.x, $0.nodes) }),
              let add = ctx.interior(sum, "Add", readBy: scaleNodes[0]), add.inputs.contains(x),
              let cubicTerm = add.inputs.first(where: { $0 != x }),
              let (cube, coefficientNodes) = scaledInput(cubicTerm, by: 0.044715, reader: add, ctx).map({ ($0.x, $0.nodes) }) else { return nil }
        if let pow = ctx.interior(cube, "Pow", readBy: coefficientNodes[0]), pow.inputs[0] == x, ctx.isConstant(pow.inputs[1], 3) {
            return scaleNodes + [add] + coefficientNodes + [pow]
        }
        if let outer = ctx.interior(cube, "Mul", readBy: coefficientNodes[0]), outer.inputs.contains(x),
           let squareValue = outer.inputs.first(where: { $0 != x }),
           let square = ctx.interior(squareValue, "Mul", readBy: outer), square.inputs == [x, x] {
            return scaleNodes + [add] + coefficientNodes + [outer, square]
        }
        return nil
    }

    /// Clip bounds from attributes (opset < 11) or constant inputs.
    static func clipBounds(_ clip: Node, _ ctx: RewriteContext) -> (Double, Double)? {
        if ctx.pass.opset() < 11 {
            let a = AttributeReader(node: clip)
            guard let lo = try? a.float("min"), let hi = try? a.float("max") else { return nil }
            return (Double(lo), Double(hi))
        }
        guard clip.inputs.count == 3, let lo = ctx.scalar(clip.inputs[1]), let hi = ctx.scalar(clip.inputs[2]) else { return nil }
        return (lo, hi)
    }
}
