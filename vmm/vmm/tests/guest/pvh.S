/*
 * PVH entry of the test guest, linked in only for the benchmark's QEMU peer (QEMU starts an
 * ELF kernel only through its PVH note). QEMU enters in 32-bit protected mode, paging off,
 * EBX = hvm_start_info. This enters long mode on page tables built at link time (the low 4 GiB
 * in 2 MiB pages: no loop, as guest instructions are slow on a nested hypervisor), fills the
 * fields of a Linux zero page the guest reads (boot protocol magic, command line, e820 count)
 * and jumps to _start as rmachine-vmm would.
 */
    .section .pvhnote, "a", @note
    .balign 4
    .long 4                     /* name size: "Xen\0" */
    .long 8                     /* descriptor size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .quad pvh_start32

    .section .text.pvh, "ax"
    .code32
pvh_start32:
    cli
    cld
    mov %ebx, %esi
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $pvh_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        /* PG | PE */
    mov %eax, %cr0
    lgdt pvh_gdt_ptr
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %eax, %fs
    mov %eax, %gs
    mov $pvh_zero_page, %edi
    movw $0xaa55, 0x1fe(%rdi)
    movl $0x53726448, 0x202(%rdi)   /* "HdrS" */
    mov 24(%rsi), %eax              /* start_info.cmdline_paddr */
    mov %eax, 0x228(%rdi)
    mov 48(%rsi), %eax              /* start_info.memmap_entries */
    mov %al, 0x1e8(%rdi)
    mov %rdi, %rsi
    jmp _start

    .section .data
    .balign 8
pvh_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
pvh_gdt_ptr:
    .word 23
    .long pvh_gdt

    .balign 4096
pvh_pml4:
    .quad pvh_pdpt + 3          /* present, writable */
    .fill 511, 8, 0
pvh_pdpt:
    .quad pvh_pd + 3, pvh_pd + 0x1000 + 3, pvh_pd + 0x2000 + 3, pvh_pd + 0x3000 + 3
    .fill 508, 8, 0
pvh_pd:                         /* 2048 2 MiB pages: present, writable, large */
    .set pvh_page, 0
    .rept 2048
    .quad pvh_page + 0x83
    .set pvh_page, pvh_page + 0x200000
    .endr
pvh_zero_page:
    .fill 4096, 1, 0
