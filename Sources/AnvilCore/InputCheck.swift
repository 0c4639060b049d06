/// Checks values fed to a model against its declared inputs: names, element
/// types, ranks and known dimensions, with symbolic dimensions bound consistently.
public enum InputCheck {
    public static func check(_ inputs: [String: Tensor], declared: [(name: String, type: TensorType)], allNames: Set<String>) throws {
        for name in inputs.keys where !allNames.contains(name) {
            throw AnvilError.invalidTensor(name: name, reason: "the model has no input of this name (inputs: \(declared.map(\.name).joined(separator: ", ")))")
        }
        var symbols: [String: Int] = [:]
        for (name, type) in declared {
            guard let t = inputs[name] else {
                throw AnvilError.invalidTensor(name: name, reason: "required model input is missing (expected \(type))")
            }
            if let e = type.elementType, e != t.dataType {
                throw AnvilError.invalidTensor(name: name, reason: "expected element type \(e), got \(t.dataType)")
            }
            guard let dims = type.dims else { continue }
            guard dims.count == t.rank else {
                throw AnvilError.invalidTensor(name: name, reason: "expected shape \(type), got \(t.shape) (rank \(t.rank) instead of \(dims.count))")
            }
            for (i, d) in dims.enumerated() {
                switch d {
                case .known(let v) where v != t.shape[i]:
                    throw AnvilError.invalidTensor(name: name, reason: "dimension \(i) must be \(v), got \(t.shape[i]) (shape \(t.shape), expected \(type))")
                case .symbol(let s):
                    if let bound = symbols[s], bound != t.shape[i] {
                        throw AnvilError.invalidTensor(name: name, reason: "dimension \(i) ('\(s)') is \(t.shape[i]) but another input bound '\(s)' to \(bound)")
                    }
                    symbols[s] = t.shape[i]
                default: break
                }
            }
        }
    }
}
