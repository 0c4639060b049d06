import AnvilCore
import AnvilKernels

/// What an engine file holds, as the runtime uses it: the layer graph with its
/// decisions and constants (prepacked weights in place), the shape profile and the
/// memory plan.
public struct EngineContents {
    public let graph: EngineGraph
    public let profile: ShapeProfile
    public let memoryPlan: StoredMemoryPlan?
}

/// Reading and writing an engine file's sections (docs/engine-format.md). The builder
/// writes; the runtime only reads.
public enum EngineFormat {
    /// Reads the sections in place: constants decoded on first use, prepacked weights
    /// used by the kernels straight from the mapping.
    public static func read(_ file: EngineFile, name: String) throws -> EngineContents {
        // A file being written has no stable bytes yet: read its encoding.
        let file = file.storage != nil ? file : try file.encoded().withUnsafeBytes { try EngineFile.decode($0, file: name) }
        let packed = try file.stableSection("WEIGHTS").map { try WeightsSection.decode($0, file: name) } ?? []
        guard let section = file.stableSection("GRAPH") else {
            throw AnvilError.invalidModel(file: name, field: "engine", reason: "has no GRAPH section")
        }
        return EngineContents(graph: try EngineCodec.decode(section, file: name, packed: packed, owner: file.storage),
                              profile: try file.withSection("PROFILE") { try ShapeProfile.decode($0, file: name) } ?? ShapeProfile(),
                              memoryPlan: try file.withSection("MEMPLAN") { try MemoryPlanSection.decode($0, file: name) })
    }

    /// An engine file: the graph, the profile, the memory plan, and the prepacked
    /// weights its kernels read (`weights`); constants in `packedOnly` are stored only prepacked.
    public static func file(for graph: EngineGraph, producer: String, requiredFeatures: CPUFeatures, metadata: [UInt8],
                            profile: ShapeProfile = ShapeProfile(), weights: [PackedWeights] = [], packedOnly: Set<String> = [],
                            memoryPlan: StoredMemoryPlan? = nil) throws -> EngineFile {
        var sections: [(tag: String, bytes: [UInt8])] = [("META", metadata), ("GRAPH", try EngineCodec.encode(graph, packedOnly: packedOnly))]
        if !profile.isEmpty { sections.append(("PROFILE", profile.encoded())) }
        if let memoryPlan { sections.append(("MEMPLAN", MemoryPlanSection.encode(memoryPlan))) }
        if !weights.isEmpty { sections.append(("WEIGHTS", WeightsSection.encode(weights))) }
        return EngineFile(producer: producer, requiredFeatures: requiredFeatures, sections: sections)
    }
}
