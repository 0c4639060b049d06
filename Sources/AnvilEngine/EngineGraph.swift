import AnvilCore
import AnvilKernels

/// The runtime's form of a graph: layers in execution order, constants, and the
/// declared inputs and outputs. Control-flow bodies are EngineGraphs too.
public final class EngineGraph: Subgraph {
    public var name: String
    public var inputs: [(name: String, type: TensorType)]
    public var outputs: [(name: String, type: TensorType)]
    /// Constants in a stable order, made into tensors on first use.
    public var constants: ConstantStore
    public var layers: [Layer]
    /// The type and shape of every value as inferred at build time for the declared
    /// input shapes; the runtime plans memory and kernels from these when they are
    /// concrete and the inputs match.
    public var valueTypes: [String: TensorType]

    public init(name: String, inputs: [(name: String, type: TensorType)], outputs: [(name: String, type: TensorType)],
                constants: ConstantStore, layers: [Layer], valueTypes: [String: TensorType] = [:]) {
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

/// Engine graphs run on the graph interpreter when they cannot be planned.
extension EngineGraph: InterpretableGraph {
    public var nodesInOrder: [Layer] { layers }
    public var inputNames: [String] { inputs.map(\.name) }
    public var outputNames: [String] { outputs.map(\.name) }
    public var constantNames: [String] { constants.names }
    public func constant(_ name: String) throws -> Tensor? { try constants.tensor(name) }
}
