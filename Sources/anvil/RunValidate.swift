import AnvilCore
import AnvilIR
import AnvilONNX
import AnvilOps
import ArgumentParser
import Foundation

/// Loads a model and refuses it up front when it holds ops Anvil lacks.
func loadRunnable(_ path: String) throws -> ReferenceExecutor {
    let model = try ONNXImporter.load(path: path)
    let executor = ReferenceExecutor(model: model)
    let missing = executor.unsupportedNodes()
    if !missing.isEmpty {
        throw AnvilError.invalidModel(file: path, field: "graph", reason: "\(missing.count) nodes use unsupported ops: \(missing.prefix(20).joined(separator: ", "))\(missing.count > 20 ? ", ..." : "")")
    }
    return executor
}

/// Matches tensors from files to the model's runtime inputs: by the name stored
/// in the file when it names an input, else by position.
func bindInputs(_ loaded: [(name: String, tensor: Tensor)], declared: [String], origin: String) throws -> [String: Tensor] {
    var bound: [String: Tensor] = [:]
    for (i, item) in loaded.enumerated() {
        if declared.contains(item.name) {
            bound[item.name] = item.tensor
        } else if i < declared.count {
            bound[declared[i]] = item.tensor
        } else {
            throw AnvilError.invalidTensor(name: item.name.isEmpty ? "input_\(i)" : item.name, reason: "\(origin) has more inputs than the model's \(declared.count)")
        }
    }
    return bound
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a model once on inputs from files and write its outputs.")

    @Argument(help: "The ONNX model (built into an engine in memory) or engine file.") var model: String
    @Option(name: .long, help: "An input as name=FILE (.pb TensorProto, .npy, or .npz: its array of that name, or its only one); repeat for each input.") var input: [String] = []
    @Option(name: .long, help: "Folder for the outputs (created if missing).") var outputDir: String
    @Option(help: "Output file format: pb or npy.") var outputFormat: String = "pb"
    @Flag(help: "Run an ONNX model on the reference executor (plain Swift kernels, no optimizer) instead of building an engine.")
    var referenceExecutor = false

    @OptionGroup var limits: LimitOptions

    func run() throws {
        try Anvil.guarded(limits) {
            guard outputFormat == "pb" || outputFormat == "npy" else { throw AnvilError.invalidArgument("--output-format must be pb or npy, not '\(outputFormat)'") }
            let runner = try Runner.load(model, reference: referenceExecutor)
            var inputs: [String: Tensor] = [:]
            var files: [String: String] = [:]
            for spec in input {
                guard let eq = spec.firstIndex(of: "="), eq != spec.startIndex else {
                    throw AnvilError.invalidArgument("--input '\(spec)' is not of the form name=FILE")
                }
                let name = String(spec[..<eq]), file = String(spec[spec.index(after: eq)...])
                guard inputs[name] == nil else { throw AnvilError.invalidArgument("--input '\(name)' is given twice") }
                inputs[name] = try TensorFiles.read(file, member: name).tensor
                files[name] = file
            }
            let outputs: [(name: String, value: Tensor)]
            do {
                outputs = try runner.run(inputs)
            } catch AnvilError.invalidTensor(let name, let reason) where files[name] != nil {
                throw AnvilError.invalidTensor(name: name, reason: "\(reason) (read from \(files[name]!))")
            }
            try makeFolder(outputDir, flag: "--output-dir")
            var written: [(path: String, bytes: [UInt8])] = []
            var taken = Set<String>()
            for (i, out) in outputs.enumerated() {
                let safe = out.name.map { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == "." ? $0 : "_" }
                // Outputs whose names map to one file name ("a/b" and "a_b", or a name given twice) get _2, _3 ….
                let base = safe.isEmpty ? "output_\(i)" : String(safe)
                var stem = base, n = 1
                while taken.contains(stem) { n += 1; stem = "\(base)_\(n)" }
                taken.insert(stem)
                let path = "\(outputDir)/\(stem).\(outputFormat)"
                written.append((path, try TensorFiles.encode(out.value, name: out.name, forPath: path)))
            }
            try OutputFiles.requireDistinct(outputs: written.map { ("--output-dir", $0.path) },
                                            inputs: [("the model", model)] + files.values.map { ("--input", $0) })
            try OutputFiles.write(written)
            print("Ran on the \(runner.description)")
            for (out, file) in zip(outputs, written) { print("\(out.name): \(out.value.dataType)\(out.value.shape) -> \(file.path)") }
        }
    }
}
