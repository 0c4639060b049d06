import AnvilCore
import Foundation

/// One ONNX test-data set: `input_N.pb` and `output_N.pb` files in a folder.
public struct TestDataSet {
    public var folder: String
    public var inputs: [(name: String, tensor: Tensor)]
    public var outputs: [(name: String, tensor: Tensor)]

    /// Reads the numbered input and output files of a folder, in order.
    public static func load(_ folder: String) throws -> TestDataSet {
        func numbered(_ prefix: String) throws -> [(String, Tensor)] {
            var result: [(String, Tensor)] = []
            var i = 0
            while true {
                let pb = "\(folder)/\(prefix)_\(i).pb", npy = "\(folder)/\(prefix)_\(i).npy"
                if FileManager.default.fileExists(atPath: pb) { result.append(try TensorFiles.read(pb)) }
                else if FileManager.default.fileExists(atPath: npy) { result.append(try TensorFiles.read(npy)) }
                else { break }
                i += 1
            }
            return result
        }
        return TestDataSet(folder: folder, inputs: try numbered("input"), outputs: try numbered("output"))
    }

    /// A data set from one .npz archive: members named after the model's inputs are the
    /// inputs, those named after its outputs the expected outputs (numpy's positional
    /// arr_N names are refused: the names must say which is which).
    public static func archive(_ path: String, inputs: [String], outputs: [String]) throws -> TestDataSet {
        var result = TestDataSet(folder: path, inputs: [], outputs: [])
        for (name, tensor) in try TensorFiles.readAll(path) {
            if inputs.contains(name) { result.inputs.append((name, tensor)) }
            else if outputs.contains(name) { result.outputs.append((name, tensor)) }
            else {
                throw AnvilError.invalidTensor(name: name, reason: "\(path) holds '\(name)', which names neither an input (\(inputs.joined(separator: ", "))) "
                                               + "nor an output (\(outputs.joined(separator: ", "))) of the model")
            }
        }
        return result
    }

    /// The data-set folders under `path`: the folder itself when it holds input_0 or
    /// output_0 files, else its `test_data_set_N` subfolders in numeric order.
    public static func folders(under path: String) throws -> [String] {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw AnvilError.io(path: path, reason: "is not a folder of reference data")
        }
        let entries = try fm.contentsOfDirectory(atPath: path)
        if entries.contains(where: { $0.hasPrefix("input_") || $0.hasPrefix("output_") }) { return [path] }
        let sets = entries.filter { $0.hasPrefix("test_data_set_") }
            .sorted { (Int($0.dropFirst(14)) ?? 0) < (Int($1.dropFirst(14)) ?? 0) }
        guard !sets.isEmpty else {
            throw AnvilError.io(path: path, reason: "holds neither input_N.pb/output_N.pb files nor test_data_set_N folders")
        }
        return sets.map { "\(path)/\($0)" }
    }
}
