import AnvilCore
import AnvilKernels
import AnvilIR
import AnvilOps

/// Evaluates nodes whose inputs are all known at build time and replaces them by
/// initializers: Constant nodes, weight transforms, and the Shape → Gather →
/// Unsqueeze → Concat → Reshape chains exporters emit, once shape inference knows
/// the shapes. Outputs larger than the fold limit stay as nodes. DequantizeLinear of
/// weights folds too: fold-quantized-layers, which runs first, has already taken the
/// ones an INT8 kernel reads; the rest feed float layers.
public struct FoldConstants: Pass {
    public let name = "fold-constants"
    public let summary = "replace nodes computable at build time (including shape arithmetic) by initializers"
    public init() {}

    public func run(_ context: PassContext) throws -> Bool {
        let graph = context.graph
        let facts = try context.inferFacts()
        var changed = false
        var constants = graph.initializers.filter { name, _ in !graph.runtimeInputs.contains { $0.name == name } }
        var kept: [Node] = []
        for node in graph.nodes {
            guard node.subgraphs.isEmpty, let def = OpRegistry.lookup(domain: node.domain, opType: node.opType, opset: context.opset(node.domain)) else {
                kept.append(node)
                continue
            }
            // Inference may already know every output's value (shape arithmetic), also when
            // it reads sizes that are known in an otherwise dynamic shape.
            var values: [Tensor]? = node.outputs.allSatisfy({ $0.isEmpty || facts[$0].flatMap(Self.knownValue) != nil })
                ? node.outputs.map { $0.isEmpty ? nil : facts[$0].flatMap(Self.knownValue) }.compactMap { $0 } : nil
            // Known-size outputs over the limit are not worth evaluating.
            let tooLarge = node.outputs.contains { name in
                facts[name]?.type.concreteShape.flatMap(ShapeMath.elementCount).map { $0 > context.foldLimit } ?? false
            }
            if values == nil, !tooLarge, node.inputs.allSatisfy({ $0.isEmpty || constants[$0] != nil }) {
                let inputs = node.inputs.map { $0.isEmpty ? nil : constants[$0] }
                if inputs.compactMap({ $0?.count }).reduce(0, +) <= context.foldLimit {
                    values = try? def.evaluate(EvalContext(node: node, opset: context.opset(node.domain), inputs: inputs) { _, _ in [] })
                }
            }
            let named = node.outputs.filter { !$0.isEmpty }
            guard let values, values.count >= named.count, values.allSatisfy({ $0.count <= context.foldLimit }) else {
                kept.append(node)
                continue
            }
            for (name, value) in zip(node.outputs, values) where !name.isEmpty {
                graph.setInitializer(name, value)
                constants[name] = value
            }
            context.count("nodes folded")
            changed = true
        }
        graph.nodes = kept
        return changed
    }

    /// The value inference knows: its constant, or an integer shape vector whose every element is a known size.
    static func knownValue(_ facts: ValueFacts) -> Tensor? {
        if let c = facts.constant { return c }
        guard let dims = facts.dims, let element = facts.type.elementType, element == .int64 || element == .int32,
              let shape = facts.type.concreteShape, shape.count <= 1, (shape.first ?? 1) == dims.count else { return nil }
        let values = dims.compactMap { $0.value.map { Int64($0) } }
        guard values.count == dims.count else { return nil }
        return try? Tensor(element, shape: shape, int64s: values)
    }
}
