import DiffuseServer
import Diffusion
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// How far two lists of 8-bit images are apart: the largest difference of one sample, and how many samples differ.
func pixelDifference(_ first: [PixelImage], _ second: [PixelImage]) -> (largest: Int, differing: Int, samples: Int) {
    guard first.count == second.count, zip(first, second).allSatisfy({ $0.width == $1.width && $0.height == $1.height && $0.channels == $1.channels })
    else { return (255, Int.max, 0) }
    var largest = 0, differing = 0, samples = 0
    for (one, other) in zip(first, second) {
        for (a, b) in zip(one.samples, other.samples) {
            let difference = abs(Int(a) - Int(b))
            largest = max(largest, difference)
            if difference > 0 { differing += 1 }
            samples += 1
        }
    }
    return (largest, differing, samples)
}

/// Stable Diffusion's batched run is not bit for bit its lone run: the UNet's and the VAE's matrix products take other
/// kernels (and so another summation order) for another batch size. The bound the tests hold it to: no 8-bit sample
/// more than 2 levels off and under 1 % of the samples off at all (another seed changes most samples by far more).
func assertWithinBatchBound(_ batched: [PixelImage], _ alone: [PixelImage], _ message: String, file: StaticString = #filePath, line: UInt = #line) {
    let difference = pixelDifference(batched, alone)
    print("batched vs alone, \(message): largest difference \(difference.largest), \(difference.differing) of \(difference.samples) samples differ")
    XCTAssertLessThanOrEqual(difference.largest, 2, message, file: file, line: line)
    XCTAssertLessThan(Double(difference.differing), 0.01 * Double(difference.samples), message, file: file, line: line)
}

/// Batched sampling runs give every request the images it gets alone (the library's batched entry points, and the
/// server's worker batching queued jobs), and a cancelled member leaves the others' images unchanged.
final class BatchingTests: XCTestCase {
    /// Pixel requests with different seeds, counts and classes in one run, against each run alone: stochastic DDPM steps
    /// (each request's noise from its own generator), classifier-free guidance, a multistep scheduler, DDIM with η.
    func testBatchedPixelRunGivesEachRequestItsLoneImages() throws {
        let conditional = try ServerFixtures.pixelFolder(self, name: "shapes", classNames: ["square", "circle", "line"])
        let unconditional = try ServerFixtures.pixelFolder(self)
        let cases: [(folder: String, scheduler: String, eta: Double?, scale: Double, classes: [String?])] = [
            (conditional, "ddpm", nil, 3, ["0", "1,2", "line"]),
            (conditional, "ddpm", nil, 1, ["2", "0", "1"]),
            (unconditional, "ddpm", nil, 1, [nil, nil, nil]),
            (unconditional, "dpm", nil, 1, [nil, nil, nil]),
            (unconditional, "ddim", 0.7, 1, [nil, nil, nil]),
        ]
        for (folder, scheduler, eta, scale, classes) in cases {
            let pipeline = try DDPMPipeline.load(folder: URL(fileURLWithPath: folder))
            let requests = zip([UInt64(5), 9, 1234], [1, 2, 1]).enumerated().map { index, pair -> SampleRequest in
                var request = SampleRequest(pipeline: folder)
                request.output = nil
                request.scheduler = scheduler
                request.steps = 7
                request.eta = eta
                request.seed = pair.0
                request.count = pair.1
                request.classes = classes[index]
                request.guidanceScale = scale
                return request
            }
            var seenRows: [[Range<Int>]] = []
            let batched = try SampleRun.runBatch(requests, pipeline: pipeline) { step in seenRows.append(step.rows) }
            XCTAssertEqual(seenRows.count, 7)
            XCTAssertEqual(seenRows.first, [0..<1, 1..<3, 3..<4])
            for (request, images) in zip(requests, batched) {
                let alone = try SampleRun.run(request, pipeline: pipeline).images
                XCTAssertEqual(images, alone, "\(scheduler) scale \(scale) seed \(request.seed): the batched images are the lone run's, bit for bit")
            }
            // Different seeds do give different images (the test could fail).
            XCTAssertNotEqual(batched[0][0], batched[2][0])
        }
    }

    /// Text-to-image requests with different prompts, negative prompts, seeds and counts in one run, against
    /// `StableDiffusionRun.generate` of each alone, on the tiny random-weight pipeline: within the bound of
    /// ``assertWithinBatchBound(_:_:_:file:line:)`` (the noise is each request's own: another seed is far off).
    func testBatchedStableDiffusionRunGivesEachRequestItsLoneImages() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: ServerFixtures.fixtures + "/sd-pipeline/tiny"))
        for (scheduler, scale) in [(String?.none, 7.5), ("euler-ancestral", 5), ("dpm", 1), ("ddpm", 3)] {
            let requests = [("a red fox", nil, UInt64(3), 1), ("a blue bird over the sea", "blurry", 4, 2), ("a red fox", "fog", 99, 1)]
                .map { prompt, negative, seed, count -> StableDiffusionRequest in
                    var request = StableDiffusionRequest(pipeline: ServerFixtures.fixtures + "/sd-pipeline/tiny", prompt: prompt)
                    request.negativePrompt = negative
                    request.seed = seed
                    request.count = count
                    request.steps = 3
                    request.scheduler = scheduler
                    request.guidanceScale = scale
                    request.width = 32
                    request.height = 24
                    return request
                }
            var steps = 0, stepCount = 0
            let batched = try StableDiffusionRun.generateBatch(requests, pipeline: pipeline, onStep: { step in
                steps += 1
                stepCount = step.count
                XCTAssertEqual(step.latents.shape[0], 4)
                XCTAssertEqual(step.rows, [0..<1, 1..<3, 3..<4])
            })
            XCTAssertEqual(steps, stepCount)
            XCTAssertEqual(steps, try StableDiffusionRun.generate(requests[0], pipeline: pipeline).steps)
            for (request, output) in zip(requests, batched) {
                let alone = try StableDiffusionRun.generate(request, pipeline: pipeline).images
                XCTAssertEqual(output.images.count, request.count)
                assertWithinBatchBound(output.images, alone, "\(scheduler ?? "PNDM") scale \(scale) seed \(request.seed)")
            }
            let otherSeed = pixelDifference([batched[0].images[0]], [batched[2].images[0]])
            XCTAssertGreaterThan(otherSeed.differing, otherSeed.samples / 2, "same prompt, other seed: most samples differ")
        }
    }

    func testRequestsThatMustRunAloneHaveNoBatchKey() throws {
        let pipeline = try StableDiffusionPipeline.load(folder: URL(fileURLWithPath: ServerFixtures.fixtures + "/sd-pipeline/tiny"))
        var request = StableDiffusionRequest(pipeline: "", prompt: "x")
        XCTAssertNotNil(StableDiffusionRun.batchKey(request, pipeline: pipeline))
        request.loras = [LoRARequest(path: "a.safetensors")]
        XCTAssertNil(StableDiffusionRun.batchKey(request, pipeline: pipeline))
        request.loras = []
        request.clipGuidance = StableDiffusionCLIPGuidanceOptions(model: "clip")
        XCTAssertNil(StableDiffusionRun.batchKey(request, pipeline: pipeline))
        var other = StableDiffusionRequest(pipeline: "", prompt: "y")
        other.steps = 49
        XCTAssertNotEqual(StableDiffusionRun.batchKey(other, pipeline: pipeline), StableDiffusionRun.batchKey(StableDiffusionRequest(pipeline: "", prompt: "z"), pipeline: pipeline))
        XCTAssertThrowsError(try StableDiffusionRun.generateBatch([StableDiffusionRequest(pipeline: "", prompt: "z"), other], pipeline: pipeline))

        var sample = SampleRequest(pipeline: "")
        sample.output = nil
        XCTAssertNotNil(SampleRun.batchKey(sample))
        sample.guides = ["color=#FF0000"]
        XCTAssertNil(SampleRun.batchKey(sample))
    }

    /// Compatible jobs queued behind a running one run as one batch (`batched_images`), an incompatible one alone; a batch
    /// member cancelled mid-run ends within a step and the others' images are their lone runs'.
    func testWorkerBatchesQueuedJobsAndACancelledMemberLeavesTheOthersAlone() async throws {
        var limits = ServerLimits()
        limits.maximumSteps = 1000
        let folder = try ServerFixtures.pixelFolder(self, steps: 1000, size: 32)
        let server = DiffuseServer(models: [try ServedModel.load(folder: folder)], limits: limits)
        let members: [(seed: Int, count: Int)] = [(1, 1), (2, 2), (3, 1)]
        try await withRouter(server) { client in
            let blocker = try await client.send(.post, "/api/v1/jobs", json: ["steps": 1000, "count": 8, "scheduler": "ddpm", "preview_every": 0])
            let blockerID = try XCTUnwrap((blocker.jsonObject["job"] as? [String: Any])?["id"] as? String)
            var ids: [String] = []
            for member in members {
                let created = try await client.send(.post, "/api/v1/jobs", json: [
                    "steps": 400, "scheduler": "ddpm", "seed": member.seed, "count": member.count, "cancel_on_disconnect": false,
                ])
                XCTAssertEqual(created.status, .accepted, created.text)
                ids.append(try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String))
            }
            let alone = try await client.send(.post, "/api/v1/jobs", json: ["steps": 3, "scheduler": "ddpm", "seed": 4])
            let aloneID = try XCTUnwrap((alone.jsonObject["job"] as? [String: Any])?["id"] as? String)
            try await client.send(.delete, "/api/v1/jobs/\(blockerID)")

            // The batch runs; cancel its middle member after a few steps.
            var step = 0
            for _ in 0..<2000 where step < 3 {
                step = try await client.send(.get, "/api/v1/jobs/\(ids[1])").jsonObject["step"] as? Int ?? 0
                try await Task.sleep(nanoseconds: 5_000_000)
            }
            XCTAssertGreaterThanOrEqual(step, 3)
            let deleted = try await client.send(.delete, "/api/v1/jobs/\(ids[1])").jsonObject
            let cancelled = try await client.waitForJob(ids[1])
            XCTAssertEqual(cancelled["state"] as? String, "cancelled")
            XCTAssertLessThanOrEqual((cancelled["step"] as? Int ?? 0) - (deleted["step"] as? Int ?? 0), 1, "ended within a step")
            XCTAssertLessThan(cancelled["step"] as? Int ?? 0, 400)

            for (position, id) in ids.enumerated() where position != 1 {
                let job = try await client.waitForJob(id, timeout: 600)
                XCTAssertEqual(job["state"] as? String, "succeeded", "\(job)")
                XCTAssertEqual(job["batched_images"] as? Int, 4, "the three compatible jobs ran as one batch of 4 images")
                var request = SampleRequest(pipeline: folder)
                request.output = nil
                request.scheduler = "ddpm"
                request.steps = 400
                request.seed = UInt64(members[position].seed)
                request.count = members[position].count
                let expected = try SampleRun.run(request).images
                let images = try (job["images"] as? [String] ?? []).map { try PNG.decode(pngBytes($0)) }
                XCTAssertEqual(images, expected, "job \(position): the lone run's images though its batch lost a member")
            }
            let single = try await client.waitForJob(aloneID)
            XCTAssertEqual(single["state"] as? String, "succeeded")
            XCTAssertNil(single["batched_images"], "400 and 3 steps do not share a run")
        }
    }

    /// With `--max-batch 1` nothing is batched: the same jobs run one at a time.
    func testMaximumBatchOneRunsEveryJobAlone() async throws {
        var limits = ServerLimits()
        limits.maximumSteps = 1000
        limits.maximumBatch = 1
        let server = DiffuseServer(models: [try ServerFixtures.pixelModel(self, steps: 1000, size: 32)], limits: limits)
        try await withRouter(server) { client in
            let blocker = try await client.send(.post, "/api/v1/jobs", json: ["steps": 1000, "count": 8, "scheduler": "ddpm", "preview_every": 0])
            let blockerID = try XCTUnwrap((blocker.jsonObject["job"] as? [String: Any])?["id"] as? String)
            var ids: [String] = []
            for seed in 1...2 {
                let created = try await client.send(.post, "/api/v1/jobs", json: ["steps": 5, "seed": seed])
                ids.append(try XCTUnwrap((created.jsonObject["job"] as? [String: Any])?["id"] as? String))
            }
            try await client.send(.delete, "/api/v1/jobs/\(blockerID)")
            for id in ids {
                let job = try await client.waitForJob(id)
                XCTAssertEqual(job["state"] as? String, "succeeded")
                XCTAssertNil(job["batched_images"])
            }
        }
    }

    /// A1111's `batch_size` × `n_iter`: image i from seed + i, `all_seeds` listing them, each image's PNG naming its seed,
    /// and image i a request of one image with seed + i (the four images ran as one batched run: within the batch bound).
    func testAutomatic1111BatchSizeTimesIterationsUsesSeedPlusIndex() async throws {
        let server = DiffuseServer(models: [try ServerFixtures.stableDiffusionModel()])
        try await withRouter(server) { client in
            let body: [String: Any] = ["prompt": "a lighthouse", "steps": 2, "cfg_scale": 4, "sampler_name": "Euler a", "width": 32, "height": 32]
            var many = body
            many["seed"] = 100
            many["batch_size"] = 2
            many["n_iter"] = 2
            let response = try await client.send(.post, "/sdapi/v1/txt2img", json: many)
            XCTAssertEqual(response.status, .ok, response.text)
            let images = response.jsonObject["images"] as? [String] ?? []
            XCTAssertEqual(images.count, 4)
            let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((response.jsonObject["info"] as? String ?? "").utf8)) as? [String: Any])
            XCTAssertEqual(info["all_seeds"] as? [Int], [100, 101, 102, 103])
            XCTAssertEqual(info["seed"] as? Int, 100)
            XCTAssertEqual(info["batch_size"] as? Int, 2)
            XCTAssertEqual(info["n_iter"] as? Int, 2)
            XCTAssertEqual((info["infotexts"] as? [String])?.count, 4)
            XCTAssertTrue((info["infotexts"] as? [String] ?? [])[3].contains("Seed: 103"))
            XCTAssertTrue(String(decoding: pngBytes(images[2]), as: UTF8.self).contains("Seed: 102"), "image 2's PNG names its seed")
            for index in [0, 2, 3] {
                var one = body
                one["seed"] = 100 + index
                let single = try await client.send(.post, "/sdapi/v1/txt2img", json: one)
                XCTAssertEqual(single.status, .ok, single.text)
                let alone = try PNG.decode(pngBytes((single.jsonObject["images"] as? [String])?.first))
                assertWithinBatchBound([try PNG.decode(pngBytes(images[index]))], [alone], "A1111 image \(index) and seed \(100 + index) alone")
            }
            XCTAssertNotEqual(images[0], images[1])
        }
    }
}
