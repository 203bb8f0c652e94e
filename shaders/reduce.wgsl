// Sum of one value per invocation over the workgroup, returned to every invocation. Must be called
// from uniform control flow (it has barriers).
var<workgroup> partial_sums: array<f32, WG>;

fn workgroup_sum(lid: u32, value: f32) -> f32 {
    partial_sums[lid] = value;
    workgroupBarrier();
    for (var span = WG / 2u; span > 0u; span >>= 1u) {
        if (lid < span) {
            partial_sums[lid] += partial_sums[lid + span];
        }
        workgroupBarrier();
    }
    let total = partial_sums[0];
    // Nobody may overwrite the sums before everyone has read the total.
    workgroupBarrier();
    return total;
}
