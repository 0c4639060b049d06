import AnvilCore

/// One layer of an engine: an op with its attributes, bound to named tensors, and
/// the kernel (tactic) chosen for it at build time.
public struct Layer {
    public var name: String
    public var opType: String
    public var domain: String
    /// The opset the op's semantics follow.
    public var opset: Int
    public var inputs: [String]
    public var outputs: [String]
    /// Attributes; subgraph attributes hold `EngineGraph`s.
    public var attributes: [String: Attribute]
    /// Names of the original ONNX nodes this layer stands for.
    public var fusedFrom: [String]
    /// The chosen implementation ("reference" or a fast kernel).
    public var tactic: String

    public init(name: String, opType: String, domain: String, opset: Int, inputs: [String], outputs: [String],
                attributes: [String: Attribute], fusedFrom: [String], tactic: String) {
        self.name = name
        self.opType = opType
        self.domain = domain
        self.opset = opset
        self.inputs = inputs
        self.outputs = outputs
        self.attributes = attributes
        self.fusedFrom = fusedFrom
        self.tactic = tactic
    }
}

/// The runtime's form of a graph: layers in execution order, constants, and the
/// declared inputs and outputs. Control-flow bodies are EngineGraphs too.
public final class EngineGraph: Subgraph {
    public var name: String
    public var inputs: [(name: String, type: TensorType)]
    public var outputs: [(name: String, type: TensorType)]
    /// Constants in a stable order.
    public var constants: [(name: String, value: Tensor)]
    public var layers: [Layer]
    /// The type and shape of every value as inferred at build time for the declared
    /// input shapes; the runtime plans memory and kernels from these when they are
    /// concrete and the inputs match.
    public var valueTypes: [String: TensorType]

    public init(name: String, inputs: [(name: String, type: TensorType)], outputs: [(name: String, type: TensorType)],
                constants: [(name: String, value: Tensor)], layers: [Layer], valueTypes: [String: TensorType] = [:]) {
        self.valueTypes = valueTypes
        self.name = name
        self.inputs = inputs
        self.outputs = outputs
        self.constants = constants
        self.layers = layers
    }

    public var inputCount: Int { inputs.count }
    public var outputTypes: [TensorType] { outputs.map(\.type) }
}
