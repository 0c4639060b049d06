import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps

/// Helpers for rules that recognize decomposed functions. Interior nodes of a
/// pattern must be read only inside it, so removing them is safe.
extension RewriteContext {
    /// The producer of `value` when it has op type `op` (default domain) and is read only by `reader`.
    public func interior(_ value: String, _ op: String, readBy reader: Node) -> Node? {
        guard let p = producer(value), p.opType == op, p.domain.isEmpty, uses.soleConsumer(value) === reader else { return nil }
        return p
    }

    /// True when `value` is a constant whose every element is within `tolerance` of `target`.
    public func isConstant(_ value: String, _ target: Double, tolerance: Double = 1e-4) -> Bool {
        guard let c = constant(value), c.dataType.isFloatingPoint || c.dataType.isInteger, c.count >= 1 else { return false }
        return c.doubles.allSatisfy { abs($0 - target) <= tolerance * max(1, abs(target)) }
    }

    /// The scalar value of a constant with one element.
    public func scalar(_ value: String) -> Double? {
        guard let c = constant(value), c.count == 1, c.dataType != .string else { return nil }
        return c.double(at: 0)
    }

    /// Flattens a product: the factors of `root` (a Mul), descending into Mul nodes
    /// read only by the product; a Div by a constant c contributes the factor 1/c.
    /// Returns the factor values and the interior nodes visited.
    public func productFactors(_ root: Node) -> (factors: [String], interior: [Node]) {
        var factors: [String] = []
        var interior: [Node] = []
        var extraConstants: [Double] = []
        func visit(_ value: String, reader: Node, depth: Int) {
            if depth < 4, let m = self.interior(value, "Mul", readBy: reader), m.inputs.count == 2 {
                interior.append(m)
                visit(m.inputs[0], reader: m, depth: depth + 1)
                visit(m.inputs[1], reader: m, depth: depth + 1)
            } else if depth < 4, let d = self.interior(value, "Div", readBy: reader), let c = scalar(d.inputs[1]), c != 0 {
                interior.append(d)
                extraConstants.append(1 / c)
                visit(d.inputs[0], reader: d, depth: depth + 1)
            } else {
                factors.append(value)
            }
        }
        if root.opType == "Div", let c = scalar(root.inputs[1]), c != 0 {
            extraConstants.append(1 / c)
            visit(root.inputs[0], reader: root, depth: 1)
        } else {
            for input in root.inputs { visit(input, reader: root, depth: 1) }
        }
        factors += extraConstants.map { "#\($0)" }
        return (factors, interior)
    }

    /// The numeric value of a factor: a constant name or a "#value" from a division.
    public func factorValue(_ factor: String) -> Double? {
        if factor.hasPrefix("#") { return Double(factor.dropFirst()) }
        return scalar(factor)
    }
}

/// A new node of a recognized function, one of `anvilStandardOps`: placed in the
/// standard domain when the model's opset has the op, else in ai.anvil.
func recognized(_ op: String, name: String, inputs: [String], outputs: [String],
                attributes: [String: Attribute] = [:], from nodes: [Node], _ ctx: RewriteContext) -> Node? {
    guard let standardSince = anvilStandardOps[op] else { preconditionFailure("\(op) is not in anvilStandardOps") }
    guard let domain = ctx.pass.domainFor(op, standardSince: standardSince) else { return nil }
    return Node(name: name, opType: op, domain: domain, inputs: inputs, outputs: outputs, attributes: attributes,
                fusedFrom: provenance(nodes, ctx))
}

/// The original names of `nodes`, in graph order.
func provenance(_ nodes: [Node], _ ctx: RewriteContext) -> [String] {
    let position = Dictionary(ctx.graph.nodes.enumerated().map { (ObjectIdentifier($0.element), $0.offset) }, uniquingKeysWith: { a, _ in a })
    return nodes.sorted { (position[ObjectIdentifier($0)] ?? 0) < (position[ObjectIdentifier($1)] ?? 0) }.flatMap(\.fusedFrom)
}
