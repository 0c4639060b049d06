import AnvilCore
import AnvilEngine
import AnvilONNX
import AnvilOps
import AnvilRuntime

/// What the fuzzers feed arbitrary bytes to: the readers of every file a user hands
/// Anvil. Each target must return (any error thrown inside is the right answer) and
/// never crash, trap or leak; `anvil-fuzz` drives them under libFuzzer and
/// AddressSanitizer, and the tests replay the inputs that once crashed
/// (fixtures/fuzz/regressions).
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// An ONNX model: decoded, then shape inference as `anvil inspect` runs it.
    case onnx
    /// A tensor file: as an ONNX TensorProto (.pb), as NumPy (.npy) and as a NumPy archive (.npz).
    case tensor
    /// An engine file: decoded, loaded and planned as `anvil run` does (also with its
    /// checksum made to match).
    case engine

    /// The memory limit while a target runs (inputs may ask for any size; the memory policy
    /// must refuse them, and the fuzzer's own limit is 2 GB).
    public static let memoryLimit = 256 << 20

    public func run(_ bytes: [UInt8]) {
        let previous = MemoryPolicy.limit
        MemoryPolicy.limit = Self.memoryLimit
        defer { MemoryPolicy.limit = previous }
        switch self {
        case .onnx:
            guard let model = try? ONNXImporter.decodeModel(bytes, file: "fuzz.onnx", folder: nil) else { return }
            var inference = ShapeInference(model: model)
            _ = try? inference.run()
        case .tensor:
            _ = try? ONNXImporter.decodeTensor(bytes, file: "fuzz.pb")
            _ = try? NumPy.decode(bytes, file: "fuzz.npy")
            _ = try? NumPyArchive.decode(bytes, file: "fuzz.npz")
        case .engine:
            // As given (the header's checks), then with the length and checksum made to match
            // (so that mutations reach the sections and the planner).
            for candidate in [bytes, EngineFile.resealed(bytes)] {
                candidate.withUnsafeBytes { raw in
                    guard let file = try? EngineFile.decode(raw, file: "fuzz.anvil"), let engine = try? Engine(file: file, name: "fuzz") else { return }
                    _ = try? engine.compile()
                }
            }
        }
    }
}
