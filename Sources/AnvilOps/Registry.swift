import AnvilCore
import AnvilIR
import AnvilKernels

/// One op of the registry: identity, supported opset range, reference evaluation
/// (from AnvilKernels) and shape inference.
public struct OpDefinition: Sendable {
    public let opType: String
    public let domain: String
    /// Earliest opset version this definition implements.
    public let sinceVersion: Int
    public let evaluate: @Sendable (EvalContext) throws -> [Tensor]
    /// Shape and type inference; nil leaves the outputs unknown.
    public var infer: InferenceRule?
}

/// The op registry, keyed by domain and op type: the kernel registry's
/// evaluations with shape-inference rules attached. Built once, never mutated.
public enum OpRegistry {
    /// Every supported op.
    public static let all: [String: OpDefinition] = {
        var b = RegistryBuilder()
        for (key, k) in KernelRegistry.all {
            b.table[key] = OpDefinition(opType: k.opType, domain: k.domain, sinceVersion: k.sinceVersion, evaluate: k.evaluate)
        }
        registerInferenceRules(&b)
        registerAnvilInference(&b)
        return b.table
    }()

    static func key(_ domain: String, _ op: String) -> String { KernelRegistry.key(domain, op) }

    /// The definition for an op at an opset version, nil when unsupported.
    public static func lookup(domain: String, opType: String, opset: Int) -> OpDefinition? {
        guard let def = all[key(domain, opType)], opset >= def.sinceVersion else { return nil }
        return def
    }

    /// Names of all supported ops in the default domain, sorted.
    public static var supportedOpTypes: [String] {
        all.values.filter { $0.domain.isEmpty }.map(\.opType).sorted()
    }
}

/// Collects inference rules while the registry is built.
struct RegistryBuilder {
    var table: [String: OpDefinition] = [:]

    /// Attaches one inference rule to several ops (a family shares its rule).
    mutating func infer(_ ops: [String], domain: String = "", _ rule: @escaping InferenceRule) {
        for op in ops {
            let key = OpRegistry.key(domain, op)
            precondition(table[key] != nil, "inference rule for unregistered op \(op)")
            table[key]?.infer = rule
        }
    }
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
