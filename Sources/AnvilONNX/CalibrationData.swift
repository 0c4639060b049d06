import AnvilCore
import Foundation

/// Input samples for calibration and accuracy budgets (`anvil build --calib DIR`): each
/// sample a full set of the model's inputs, checked against their declared types and
/// shapes, with every problem reported against the file it came from.
public struct CalibrationData {
    public var samples: [(source: String, inputs: [String: Tensor])] = []

    /// Reads `path`: a folder of `test_data_set_N` folders (one sample each), of
    /// `input_N.pb`/`.npy` files (one sample), or of `.npz` archives (one sample each,
    /// arrays named after the inputs); or a single `.npz` archive.
    public static func load(_ path: String, inputs declared: [(name: String, type: TensorType)]) throws -> CalibrationData {
        let fm = FileManager.default
        var isFolder: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isFolder) else { throw AnvilError.io(path: path, reason: "calibration data: no such file or folder") }
        var result = CalibrationData()
        let names = declared.map(\.name)
        func bind(_ loaded: [(name: String, tensor: Tensor)], source: String, byPosition: Bool) throws {
            var bound: [String: Tensor] = [:]
            for (i, item) in loaded.enumerated() {
                let name = names.contains(item.name) ? item.name : (byPosition && i < names.count ? names[i] : nil)
                guard let name else {
                    throw AnvilError.io(path: source, reason: "calibration data holds '\(item.name.isEmpty ? "input_\(i)" : item.name)', "
                                        + "which is not a model input (inputs: \(names.joined(separator: ", ")))")
                }
                guard bound[name] == nil else { throw AnvilError.io(path: source, reason: "calibration data gives input '\(name)' twice") }
                bound[name] = item.tensor
            }
            do {
                try InputCheck.check(bound, declared: declared, allNames: Set(names))
            } catch AnvilError.invalidTensor(let name, let reason) {
                throw AnvilError.io(path: source, reason: "calibration input '\(name)': \(reason)")
            }
            for (name, t) in bound where t.dataType.isFloatingPoint && t.doubles.contains(where: { !$0.isFinite }) {
                throw AnvilError.io(path: source, reason: "calibration input '\(name)' holds NaN or ±∞: calibration needs finite data")
            }
            result.samples.append((source, bound))
        }
        if !isFolder.boolValue {
            guard path.hasSuffix(".npz") else { throw AnvilError.io(path: path, reason: "calibration data must be a folder or an .npz archive") }
            try bind(try TensorFiles.readAll(path), source: path, byPosition: false)
            return result
        }
        let entries = try fm.contentsOfDirectory(atPath: path).sorted { a, b in
            // test_data_set_2 before test_data_set_10.
            let (na, nb) = (Int(a.filter(\.isNumber)) ?? 0, Int(b.filter(\.isNumber)) ?? 0)
            return na != nb ? na < nb : a < b
        }
        if entries.contains(where: { $0.hasPrefix("input_") }) {
            try bind(try TestDataSet.load(path).inputs, source: path, byPosition: true)
        }
        for entry in entries {
            let full = "\(path)/\(entry)"
            if entry.hasPrefix("test_data_set_") {
                let set = try TestDataSet.load(full)
                guard !set.inputs.isEmpty else { throw AnvilError.io(path: full, reason: "calibration folder holds no input_N.pb or input_N.npy files") }
                try bind(set.inputs, source: full, byPosition: true)
            } else if entry.hasSuffix(".npz") {
                try bind(try TensorFiles.readAll(full), source: full, byPosition: false)
            }
        }
        guard !result.samples.isEmpty else {
            throw AnvilError.io(path: path, reason: "holds no calibration data (test_data_set_N folders, input_N.pb/.npy files or .npz archives)")
        }
        return result
    }
}
