import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilONNX
import AnvilRuntime
import ArgumentParser
import Foundation

struct Build: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Optimize an ONNX model and write an engine file.",
        discussion: "This version gives every layer the reference kernels; oneDNN tactics, the memory plan and prepacked weights come next.")

    @Argument(help: "The ONNX model.") var model: String
    @Option(name: .shortAndLong, help: "The engine file to write (never the input).") var output: String
    @Flag(help: "Build without running the optimizer.") var noOptimize = false

    func run() throws {
        try Anvil.guarded {
            let start = Date()
            let m = try ONNXImporter.load(path: model)
            var builder = EngineBuilder()
            builder.optimize = !noOptimize
            let result = try builder.build(m, name: model)
            let bytes = try result.file.encoded()
            let a = URL(fileURLWithPath: model).standardizedFileURL.resolvingSymlinksInPath().path
            let b = URL(fileURLWithPath: output).standardizedFileURL.resolvingSymlinksInPath().path
            guard a != b else { throw AnvilError.io(path: output, reason: "is the input model; choose another output file") }
            try TensorFiles.writeAll([(output, bytes)])
            let fused = result.graph.layers.filter { $0.fusedFrom.count > 1 }.count
            print("Built \(output): \(result.graph.layers.count) layers (\(fused) fused), \(bytes.count) bytes, in \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
        }
    }
}

/// True when the file starts with the engine magic.
func isEngineFile(_ path: String) -> Bool {
    guard let handle = FileHandle(forReadingAtPath: path) else { return false }
    defer { try? handle.close() }
    return (try? handle.read(upToCount: 8)).map { [UInt8]($0) == EngineFile.magic } ?? false
}

/// Something that runs a model: the reference executor on ONNX or an engine.
struct Runner {
    let inputNames: [String]
    let run: ([String: Tensor]) throws -> [(name: String, value: Tensor)]

    static func load(_ path: String) throws -> Runner {
        if isEngineFile(path) {
            let engine = try Engine(path: path)
            let context = ExecutionContext(engine: engine)
            return Runner(inputNames: engine.inputs.map(\.name)) { try context.run($0) }
        }
        let executor = try loadRunnable(path)
        return Runner(inputNames: executor.model.graph.runtimeInputs.map(\.name)) { try executor.run($0) }
    }
}
