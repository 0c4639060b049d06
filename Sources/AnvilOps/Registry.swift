import AnvilCore
import AnvilIR
import AnvilKernels

/// One op of the registry: the kernel registry's definition (identity, opset
/// range, reference evaluation) and the op's shape inference rule.
public struct OpDefinition: Sendable {
    /// The op's entry in the kernel registry.
    public let kernel: KernelDefinition
    /// Shape and type inference; nil leaves the outputs unknown.
    public let infer: InferenceRule?

    /// Evaluates the op with its reference kernel.
    public func evaluate(_ context: EvalContext) throws -> [Tensor] { try kernel.evaluate(context) }
}

/// The op registry: the kernel registry, plus a side table of inference rules
/// keyed like it. Built once, never mutated.
public enum OpRegistry {
    /// Inference rules by kernel-registry key (`KernelRegistry.key`).
    public static let inferenceRules: [String: InferenceRule] = {
        var b = RegistryBuilder()
        registerInferenceRules(&b)
        registerDetectionInference(&b)
        registerRecurrentInference(&b)
        registerAnvilInference(&b)
        registerMicrosoftQuantizedInference(&b)
        return b.rules
    }()

    /// The definition for an op at an opset version, nil when unsupported.
    public static func lookup(domain: String, opType: String, opset: Int) -> OpDefinition? {
        guard let kernel = KernelRegistry.lookup(domain: domain, opType: opType, opset: opset) else { return nil }
        return OpDefinition(kernel: kernel, infer: inferenceRules[KernelRegistry.key(domain, opType)])
    }
}

/// Collects inference rules while the registry is built.
struct RegistryBuilder {
    var rules: [String: InferenceRule] = [:]

    /// Attaches one inference rule to several ops (a family shares its rule); each
    /// op must be in the kernel registry.
    mutating func infer(_ ops: [String], domain: String = "", _ rule: @escaping InferenceRule) {
        for op in ops {
            let key = KernelRegistry.key(domain, op)
            precondition(KernelRegistry.all[key] != nil, "inference rule for unregistered op \(op)")
            rules[key] = rule
        }
    }

    /// The rule attached to an op so far, nil when it has none.
    func rule(domain: String = "", _ op: String) -> InferenceRule? { rules[KernelRegistry.key(domain, op)] }
}

extension AttributeReader {
    /// Reads a node's attributes.
    public init(node: Node) { self.init(attributes: node.attributes, name: node.name, opType: node.opType) }
}

extension EvalContext {
    /// The evaluation context of an IR node.
    public init(node: Node, opset: Int, inputs: [Tensor?], runSubgraph: @escaping SubgraphRunner) {
        self.init(name: node.name, opType: node.opType, domain: node.domain, outputCount: node.outputs.count,
                  attributes: node.attributes, opset: opset, inputs: inputs, runSubgraph: runSubgraph)
    }
}
